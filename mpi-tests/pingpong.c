/* Ping-pong between ranks 0 and 1: for each message size from MIN to MAX bytes (doubling),
 * WARMUP round trips, then REPS timed repetitions of ITERS round trips each; rank 0 prints
 * one line per size:
 *   pingpong bytes=B iters=I latency_us=L bandwidth_MBps=W reps=R median_us=M
 * latency = half the mean round-trip time of the fastest repetition (a repetition that another
 * process preempted is slower, never faster), median = that of the repetitions' median;
 * bandwidth = bytes / latency.
 * Usage: pingpong [--min B] [--max B] [--iters N] [--reps R] (defaults: 1 B to 4 MiB, 1000
 * iterations, fewer for large messages so a run stays short, 1 repetition). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long min = 1, max = 4L << 20, iters = 1000, reps = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--min") == 0) min = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--max") == 0) max = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--iters") == 0) iters = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0) reps = atol(argv[i + 1]);
    }
    if (reps < 1) reps = 1;
    if (reps > 99) reps = 99;
    if (size < 2) {
        if (rank == 0) fprintf(stderr, "pingpong: needs 2 ranks, world size is %d\n", size);
        MPI_Finalize();
        return 1;
    }
    char *buf = malloc((size_t)max);
    memset(buf, rank + 1, (size_t)max);
    double lats[99];
    for (long bytes = min > 0 ? min : 1;;) {
        long n = bytes >= (256L << 10) ? (iters / 10 > 10 ? iters / 10 : 10) : iters;
        long warm = n / 10 + 1;
        for (long r = -1; r < reps; r++) {
            /* r = -1: the warm-up round trips, untimed. */
            long count = r < 0 ? warm : n;
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            for (long i = 0; i < count; i++) {
                if (rank == 0) {
                    MPI_Send(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                    MPI_Recv(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else if (rank == 1) {
                    MPI_Recv(buf, (int)bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    MPI_Send(buf, (int)bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
                }
            }
            if (r >= 0) lats[r] = (MPI_Wtime() - t0) / (2.0 * (double)n);
        }
        qsort(lats, (size_t)reps, sizeof lats[0], cmp_double);
        double lat = lats[0], med = lats[reps / 2];
        if (rank == 0) {
            printf("pingpong bytes=%ld iters=%ld latency_us=%.3f bandwidth_MBps=%.1f reps=%ld "
                   "median_us=%.3f\n",
                   bytes, n, lat * 1e6, (double)bytes / lat / 1e6, reps, med * 1e6);
            fflush(stdout);
        }
        if (bytes >= max) break;
        bytes = bytes * 2 > max ? max : bytes * 2;
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
