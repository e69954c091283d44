// An idle service: a few threads that wait for work that never comes (a condition variable,
// epoll with a timeout, a periodic sleep). Nothing is wrong with it: a diagnosis must say so
// rather than invent a culprit. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o idle_service idle_service.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static int queue_len;

__attribute__((noinline)) void wait_for_job(void) {
    pthread_mutex_lock(&queue_lock);
    while (queue_len == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&queue_cond, &queue_lock, &ts);
    }
    queue_len--;
    pthread_mutex_unlock(&queue_lock);
}

static void *worker(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "worker");
    for (;;)
        wait_for_job();
    return NULL;
}

__attribute__((noinline)) void accept_loop(void) {
    int ep = epoll_create1(0);
    struct epoll_event ev;
    for (;;)
        epoll_wait(ep, &ev, 1, 500);
}

static void *listener(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "listener");
    accept_loop();
    return NULL;
}

__attribute__((noinline)) void housekeeping(void) {
    for (;;) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    pthread_create(&t[2], NULL, listener, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    housekeeping();
}
