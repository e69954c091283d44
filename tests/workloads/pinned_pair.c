// Two CPU-bound threads pinned to the same CPU (CPU 0): each runs about half the time and waits
// in the run queue the other half, so each has runnable time ~ wall time / 2. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o pinned_pair pinned_pair.c
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>

volatile unsigned long sink;

#define BURN()                                                                                     \
    do {                                                                                           \
        unsigned long x = 1;                                                                       \
        for (;;) {                                                                                 \
            for (int i = 0; i < 1000000; i++) {                                                    \
                x = x * 6364136223846793005UL + 1442695040888963407UL;                             \
                __asm__ volatile("" : "+r"(x));                                                    \
            }                                                                                      \
            sink = x;                                                                              \
        }                                                                                          \
    } while (0)

__attribute__((noinline)) void burn_a(void) { BURN(); }
__attribute__((noinline)) void burn_b(void) { BURN(); }

static void *run(void *arg) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (arg)
        burn_a();
    else
        burn_b();
    return NULL;
}

int main(void) {
    pthread_t a, b;
    pthread_create(&a, NULL, run, (void *)1);
    pthread_create(&b, NULL, run, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
