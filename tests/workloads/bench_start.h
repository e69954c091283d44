// The start protocol shared by the bench_*.c workloads of `cargo xtask bench`: the workers are
// created first and wait; main prints "ready" once they all wait, reads one line from stdin (the
// agent attaches in between), releases them and times their work.
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static int started, go;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* In each worker, before its work: counts itself in and waits for the start. */
static void wait_for_start(void) {
    pthread_mutex_lock(&start_lock);
    started++;
    pthread_cond_broadcast(&start_cond);
    while (!go)
        pthread_cond_wait(&start_cond, &start_lock);
    pthread_mutex_unlock(&start_lock);
}

/* In main, once `workers` threads were created: "ready", a line from stdin, then the start.
   Returns the start time (now_ns), or -1 if stdin closed first. */
static long start_workers(int workers) {
    pthread_mutex_lock(&start_lock);
    while (started < workers)
        pthread_cond_wait(&start_cond, &start_lock);
    pthread_mutex_unlock(&start_lock);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return -1;
    long t0 = now_ns();
    pthread_mutex_lock(&start_lock);
    go = 1;
    pthread_cond_broadcast(&start_cond);
    pthread_mutex_unlock(&start_lock);
    return t0;
}
