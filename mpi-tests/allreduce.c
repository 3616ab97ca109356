/* Allreduce check: every rank contributes rank+1 (and a vector of COUNT such values); the sum
 * must be size*(size+1)/2 everywhere. Rank 0 prints
 *   allreduce size=N sum=S ok
 * and every rank exits 1 if its result is wrong. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define COUNT (1 << 16)

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    double *v = malloc(sizeof(double) * COUNT), *r = malloc(sizeof(double) * COUNT);
    for (int i = 0; i < COUNT; i++) v[i] = (double)(rank + 1) * (double)(i % 7);
    MPI_Allreduce(v, r, COUNT, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    long want = (long)size * (size + 1) / 2;
    int ok = sum == want;
    for (int i = 0; i < COUNT && ok; i++) ok = r[i] == (double)want * (double)(i % 7);
    if (!ok) fprintf(stderr, "allreduce: rank %d got a wrong sum (%ld, want %ld)\n", rank, sum, want);
    else if (rank == 0) printf("allreduce size=%d sum=%ld ok\n", size, sum);
    free(v);
    free(r);
    MPI_Finalize();
    return ok ? 0 : 1;
}
