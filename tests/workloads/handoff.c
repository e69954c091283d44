// Short waits for the off-CPU sampling test. Two threads ("ping", "pong") hand a token back
// and forth through a mutex and a condition variable, so each spends about half its time in
// futex waits of a few to a few tens of microseconds (below the default --offcpu-rate of
// 100 us); every 1000 hand-offs "ping" also sleeps 200 us. A third thread ("napper") sleeps
// 50 us at a time (timer slack 1 ns) and does nothing else: its time off CPU is about all of
// its time whatever a profiler costs it, in waits below the rate. (At 20 us, two agents
// measuring it at once disagreed by up to 10%: each sees the wait shifted by the other's
// program run time at its two ends, a microsecond or two.)
// Prints "ready" once the threads run. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o handoff handoff.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn, running;

__attribute__((noinline)) static void take_turn(int me) {
    pthread_mutex_lock(&lock);
    while (turn != me)
        pthread_cond_wait(&cond, &lock);
    turn = !me;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
}

static void *player(void *arg) {
    int me = (int)(long)arg;
    pthread_setname_np(pthread_self(), me ? "pong" : "ping");
    __atomic_add_fetch(&running, 1, __ATOMIC_SEQ_CST);
    struct timespec nap = {0, 200 * 1000};
    for (unsigned long n = 0;; n++) {
        take_turn(me);
        if (me == 0 && n % 1000 == 999)
            nanosleep(&nap, NULL);
    }
    return NULL;
}

__attribute__((noinline)) static void nap(void) {
    struct timespec ts = {0, 50 * 1000};
    nanosleep(&ts, NULL);
}

static void *napper(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "napper");
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    __atomic_add_fetch(&running, 1, __ATOMIC_SEQ_CST);
    for (;;)
        nap();
    return NULL;
}

int main(void) {
    pthread_t t[3];
    for (long i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, player, (void *)i);
    pthread_create(&t[2], NULL, napper, NULL);
    while (__atomic_load_n(&running, __ATOMIC_SEQ_CST) < 3) {
        struct timespec ms = {0, 1000 * 1000};
        nanosleep(&ms, NULL);
    }
    printf("ready\n");
    fflush(stdout);
    pthread_join(t[0], NULL);
    return 0;
}
