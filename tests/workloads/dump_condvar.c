// Thread-dump workload: N threads (argument, default 100) wait on one condition variable that
// is never signalled. Prints "ready" once all of them are waiting, then runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o dump_condvar dump_condvar.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static int waiting;
static int work;

__attribute__((noinline)) void wait_for_work(void) {
    pthread_mutex_lock(&queue_lock);
    waiting++;
    while (!work)
        pthread_cond_wait(&work_ready, &queue_lock);
    pthread_mutex_unlock(&queue_lock);
}

static void *consumer(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "consumer");
    wait_for_work();
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, consumer, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    for (;;) {
        pthread_mutex_lock(&queue_lock);
        int w = waiting;
        pthread_mutex_unlock(&queue_lock);
        if (w == n)
            break;
        usleep(1000);
    }
    usleep(100 * 1000); // the last ones are inside the futex call by now
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
