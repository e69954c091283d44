// Benchmark workload (cargo xtask bench): CPU bound. THREADS threads each run ROUNDS rounds of
// fixed arithmetic spread over a few functions (so CPU samples have stacks to walk), then the
// process exits. No syscalls and no context switches while it runs, beyond preemption.
//
// Usage: bench_cpu ROUNDS [THREADS]
// Protocol (bench_start.h): prints "ready" once every thread is waiting to start, reads one
// line from stdin, runs, prints "elapsed_ns N rounds M" (wall time of the work alone) and exits.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o bench_cpu bench_cpu.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_start.h"

static long rounds;
static volatile uint64_t sink;

__attribute__((noinline)) uint64_t mix(uint64_t x) {
    for (int i = 0; i < 1000; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}

__attribute__((noinline)) uint64_t hash_round(uint64_t x) {
    return mix(x) ^ mix(x >> 7);
}

__attribute__((noinline)) uint64_t crunch(uint64_t seed) {
    uint64_t x = seed;
    for (long r = 0; r < rounds; r++)
        x = hash_round(x + (uint64_t)r);
    return x;
}

static void *worker(void *arg) {
    wait_for_start();
    sink += crunch((uint64_t)(uintptr_t)arg);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s ROUNDS [THREADS]\n", argv[0]);
        return 2;
    }
    rounds = atol(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    if (rounds < 1 || threads < 1 || threads > 256) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    pthread_t *ts = calloc(threads, sizeof *ts);
    for (long i = 0; i < threads; i++)
        pthread_create(&ts[i], NULL, worker, (void *)(i + 1));
    long t0 = start_workers(threads);
    if (t0 < 0)
        return 1;
    for (int i = 0; i < threads; i++)
        pthread_join(ts[i], NULL);
    long t1 = now_ns();
    printf("elapsed_ns %ld rounds %ld\n", t1 - t0, rounds * threads);
    fflush(stdout);
    return 0;
}
