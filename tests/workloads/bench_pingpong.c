// Benchmark workload (cargo xtask bench): context-switch heavy. PAIRS pairs of threads hand a
// token back and forth through a mutex and a condition variable; each thread takes the token
// HANDOFFS times, then the process exits. Every hand-off puts one thread to sleep on the
// condition variable (futex wait) and wakes the other (futex wake).
//
// Usage: bench_pingpong HANDOFFS [PAIRS] [PATH_BITS] [PIN]
// - PATH_BITS > 0: each hand-off is made through one of 2^PATH_BITS distinct call paths (chosen
//   by the hand-off's number), so the profiler sees that many distinct user stacks per thread.
// - PIN = 1: the two threads of a pair are pinned to two different CPUs (0 and 1), so every
//   hand-off wakes a thread on the other CPU, often an idle one. PIN = 2: both on CPU 0, so a
//   hand-off is a direct switch from one thread to the other. Unpinned (0), the scheduler
//   moves between these two regimes, and run times jump between two modes.
//
// Protocol (bench_start.h): prints "ready" once every thread is waiting to start, reads one
// line from stdin, runs, prints "elapsed_ns N handoffs M" (wall time of the hand-offs alone,
// M = 2 * HANDOFFS * PAIRS) and exits.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o bench_pingpong bench_pingpong.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_start.h"

struct pair {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int turn;
    long handoffs;
};

static int path_bits, pin;
static volatile long sink;

/* Waits for the token (turn == me), then passes it on. */
__attribute__((noinline)) void handoff(struct pair *p, int me) {
    pthread_mutex_lock(&p->lock);
    while (p->turn != me)
        pthread_cond_wait(&p->cond, &p->lock);
    p->turn = !me;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

__attribute__((noinline)) void path_left(struct pair *p, int me, long i, int level);
__attribute__((noinline)) void path_right(struct pair *p, int me, long i, int level);

/* Reaches handoff() through `level` frames, left or right by the bits of i. */
__attribute__((noinline)) void descend(struct pair *p, int me, long i, int level) {
    if (level == 0)
        handoff(p, me);
    else if ((i >> (level - 1)) & 1)
        path_left(p, me, i, level - 1);
    else
        path_right(p, me, i, level - 1);
    sink++; /* no tail calls: every level keeps its frame */
}

__attribute__((noinline)) void path_left(struct pair *p, int me, long i, int level) {
    descend(p, me, i, level);
    sink++;
}

__attribute__((noinline)) void path_right(struct pair *p, int me, long i, int level) {
    descend(p, me, i, level);
    sink += 2;
}

struct role {
    struct pair *pair;
    int me;
};

static void *player(void *arg) {
    struct role *r = arg;
    if (pin) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(pin == 1 ? r->me : 0, &cpus);
        pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
    }
    wait_for_start();
    for (long i = 0; i < r->pair->handoffs; i++)
        descend(r->pair, r->me, i, path_bits);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s HANDOFFS [PAIRS] [PATH_BITS]\n", argv[0]);
        return 2;
    }
    long handoffs = atol(argv[1]);
    int pairs = argc > 2 ? atoi(argv[2]) : 1;
    path_bits = argc > 3 ? atoi(argv[3]) : 0;
    pin = argc > 4 ? atoi(argv[4]) : 0;
    if (handoffs < 1 || pairs < 1 || pairs > 256 || path_bits < 0 || path_bits > 24) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    struct pair *ps = calloc(pairs, sizeof *ps);
    struct role *roles = calloc(2 * pairs, sizeof *roles);
    pthread_t *ts = calloc(2 * pairs, sizeof *ts);
    for (int k = 0; k < pairs; k++) {
        pthread_mutex_init(&ps[k].lock, NULL);
        pthread_cond_init(&ps[k].cond, NULL);
        ps[k].handoffs = handoffs;
        for (int me = 0; me < 2; me++) {
            roles[2 * k + me] = (struct role){&ps[k], me};
            pthread_create(&ts[2 * k + me], NULL, player, &roles[2 * k + me]);
        }
    }
    long t0 = start_workers(2 * pairs);
    if (t0 < 0)
        return 1;
    for (int i = 0; i < 2 * pairs; i++)
        pthread_join(ts[i], NULL);
    long t1 = now_ns();
    printf("elapsed_ns %ld handoffs %ld\n", t1 - t0, 2 * handoffs * pairs);
    fflush(stdout);
    return 0;
}
