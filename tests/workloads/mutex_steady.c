// A steady lock convoy for the mutex-fraction test: like mutex_convoy.c, but the holders sleep
// inside their critical sections instead of spinning, so the process needs little CPU and its
// lock delays do not depend on how the machine's CPUs are shared (no preemption of a holder
// turning one span into a huge one). One thread holds `steady_lock` ~2 ms (slow_hold), three
// hold it ~50 us (fast_hold) about once a millisecond. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o mutex_steady mutex_steady.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

pthread_mutex_t steady_lock = PTHREAD_MUTEX_INITIALIZER;

static void nap_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) void slow_hold(void) {
    pthread_mutex_lock(&steady_lock);
    nap_us(2000);
    pthread_mutex_unlock(&steady_lock);
}

__attribute__((noinline)) void fast_hold(void) {
    pthread_mutex_lock(&steady_lock);
    nap_us(50);
    pthread_mutex_unlock(&steady_lock);
}

static void *slow(void *arg) {
    (void)arg;
    for (;;) {
        slow_hold();
        nap_us(1000);
    }
    return NULL;
}

static void *fast(void *arg) {
    (void)arg;
    for (;;) {
        fast_hold();
        nap_us(1000);
    }
    return NULL;
}

int main(void) {
    pthread_t t[4];
    pthread_create(&t[0], NULL, slow, NULL);
    for (int i = 1; i < 4; i++)
        pthread_create(&t[i], NULL, fast, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
