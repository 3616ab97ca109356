/* MPI hello world for the launcher's tests: each rank prints one line
 *   hello rank=R size=N host=H uid=U ns=USERNS_INODE
 * and rank 0 then checks, after a barrier and a gather, that every rank has the same uid
 * and (with --check-size N) that the world has N ranks: a launch that silently starts N
 * separate 1-rank jobs (MPICH under srun --mpi=pmix) must fail, not pass. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int want_size = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--check-size") == 0)
            want_size = atoi(argv[i + 1]);

    char host[256] = "?";
    gethostname(host, sizeof host);
    struct stat ns;
    unsigned long long ns_ino = stat("/proc/self/ns/user", &ns) == 0 ? (unsigned long long)ns.st_ino : 0;
    unsigned uid = (unsigned)getuid();
    printf("hello rank=%d size=%d host=%s uid=%u ns=%llu\n", rank, size, host, uid, ns_ino);
    fflush(stdout);

    unsigned *uids = rank == 0 ? malloc(sizeof(unsigned) * (size_t)size) : NULL;
    MPI_Gather(&uid, 1, MPI_UNSIGNED, uids, 1, MPI_UNSIGNED, 0, MPI_COMM_WORLD);
    int bad = 0;
    if (rank == 0) {
        for (int r = 0; r < size; r++)
            if (uids[r] != uid) {
                fprintf(stderr, "hello: rank %d has uid %u, rank 0 has %u\n", r, uids[r], uid);
                bad = 1;
            }
        if (want_size && size != want_size) {
            fprintf(stderr, "hello: world size %d, expected %d\n", size, want_size);
            bad = 1;
        }
        if (!bad)
            printf("hello ok size=%d\n", size);
        free(uids);
    }
    MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return bad ? 1 : 0;
}
