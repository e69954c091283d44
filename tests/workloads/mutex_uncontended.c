// One thread locks and unlocks a mutex in a loop and a second thread sleeps: no contention, so
// the mutex profile must be empty. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o mutex_uncontended mutex_uncontended.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

pthread_mutex_t lone_lock = PTHREAD_MUTEX_INITIALIZER;
volatile unsigned long sink;

__attribute__((noinline)) void lone_section(void) {
    pthread_mutex_lock(&lone_lock);
    for (int i = 0; i < 1000; i++)
        sink++;
    pthread_mutex_unlock(&lone_lock);
}

static void *locker(void *arg) {
    (void)arg;
    for (;;) {
        lone_section();
        usleep(100);
    }
    return NULL;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, locker, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
