// A target that exits in the middle of a capture: burns CPU in doomed_spin() for argv[1] seconds
// (default 2) after printing "ready", then exits 0.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o exit_early exit_early.c
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void doomed_spin(double seconds) {
    double end = now() + seconds;
    while (now() < end)
        for (volatile unsigned long i = 0; i < 100000UL; i++)
            sink += i;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    doomed_spin(seconds);
    return 0;
}
