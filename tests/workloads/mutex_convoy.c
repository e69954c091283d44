// A lock convoy with a known culprit: one thread holds big_lock ~2 ms per critical section
// (slow_section), three others hold it ~20 us (fast_section); all contend. The fast holders
// perform most of the wake-ups, but the waiting is caused by the slow section: a mutex profile
// must charge >= 80% of the delay to slow_section. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o mutex_convoy mutex_convoy.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

pthread_mutex_t big_lock = PTHREAD_MUTEX_INITIALIZER;
volatile unsigned long sink;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Busy for `us` microseconds of wall time (work inside a critical section). */
__attribute__((noinline)) void work_us(long us) {
    long end = now_ns() + us * 1000;
    while (now_ns() < end)
        sink++;
}

__attribute__((noinline)) void slow_section(void) {
    pthread_mutex_lock(&big_lock);
    work_us(2000);
    pthread_mutex_unlock(&big_lock);
}

__attribute__((noinline)) void fast_section(void) {
    pthread_mutex_lock(&big_lock);
    work_us(20);
    pthread_mutex_unlock(&big_lock);
}

static void *slow_worker(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "slow");
    for (;;) {
        slow_section();
        usleep(1000);
    }
    return NULL;
}

static void *fast_worker(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "fast");
    for (;;) {
        fast_section();
        usleep(50);
    }
    return NULL;
}

int main(void) {
    pthread_t t[4];
    pthread_create(&t[0], NULL, slow_worker, NULL);
    for (int i = 1; i < 4; i++)
        pthread_create(&t[i], NULL, fast_worker, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
