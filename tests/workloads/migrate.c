// A thread that sleeps 5 ms, then moves itself to the other CPU, over and over: it leaves the
// CPU on one core and comes back on the other. An off-CPU tracker that keeps per-thread state
// per CPU inflates or loses these intervals; the total off-CPU time of this thread must stay
// below the wall-clock time. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o migrate migrate.c
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline)) void hop_forever(void) {
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int cpu = 0;; cpu = (cpu + 1) % (ncpu > 1 ? 2 : 1)) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set);
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        sink++;
    }
}

static void *run(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "hopper");
    hop_forever();
    return NULL;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, run, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
