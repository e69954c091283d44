// Thread-dump workload: two threads take two global mutexes in opposite order and deadlock
// before anyone looks; a third thread then blocks behind them on one of the locks. Prints
// "ready" about 200 ms after the deadlock formed, then the process stays deadlocked (its main
// thread sleeps) until killed. The optional argument picks the mutex kind: default,
// recursive, errorcheck, pi (priority inheritance: FUTEX_LOCK_PI) or robust.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o dump_deadlock dump_deadlock.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

pthread_mutex_t lock_a = PTHREAD_MUTEX_INITIALIZER;
pthread_mutex_t lock_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t both_hold_one;
volatile long balance;

__attribute__((noinline)) void transfer_ab(void) {
    pthread_mutex_lock(&lock_a);
    pthread_barrier_wait(&both_hold_one);
    pthread_mutex_lock(&lock_b); // held by xfer-ba: never returns
    balance++;
    pthread_mutex_unlock(&lock_b);
    pthread_mutex_unlock(&lock_a);
}

__attribute__((noinline)) void transfer_ba(void) {
    pthread_mutex_lock(&lock_b);
    pthread_barrier_wait(&both_hold_one);
    // Let xfer-ab block first: with PI mutexes the kernel then refuses *this* lock (EDEADLK)
    // and glibc parks this thread, always the same one.
    usleep(30 * 1000);
    pthread_mutex_lock(&lock_a); // held by xfer-ab: never returns
    balance--;
    pthread_mutex_unlock(&lock_a);
    pthread_mutex_unlock(&lock_b);
}

__attribute__((noinline)) void audit(void) {
    pthread_mutex_lock(&lock_a); // blocked behind the deadlock
    balance += 0;
    pthread_mutex_unlock(&lock_a);
}

static void *xfer_ab_thread(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "xfer-ab");
    transfer_ab();
    return NULL;
}

static void *xfer_ba_thread(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "xfer-ba");
    transfer_ba();
    return NULL;
}

static void *auditor_thread(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "auditor");
    audit();
    return NULL;
}

static int init_locks(const char *kind) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    if (strcmp(kind, "recursive") == 0)
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    else if (strcmp(kind, "errorcheck") == 0)
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    else if (strcmp(kind, "pi") == 0)
        pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
    else if (strcmp(kind, "robust") == 0)
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    else if (strcmp(kind, "default") != 0)
        return -1;
    pthread_mutex_init(&lock_a, &attr);
    pthread_mutex_init(&lock_b, &attr);
    return 0;
}

int main(int argc, char **argv) {
    pthread_t a, b, c;
    if (init_locks(argc > 1 ? argv[1] : "default") != 0) {
        fprintf(stderr, "unknown mutex kind %s\n", argv[1]);
        return 2;
    }
    pthread_barrier_init(&both_hold_one, NULL, 2);
    pthread_create(&a, NULL, xfer_ab_thread, NULL);
    pthread_create(&b, NULL, xfer_ba_thread, NULL);
    usleep(100 * 1000); // both are in their second pthread_mutex_lock by now
    pthread_create(&c, NULL, auditor_thread, NULL);
    usleep(100 * 1000);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
