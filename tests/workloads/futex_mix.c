// Futex waits of known lengths for the block-profile tests: one thread loops over nine
// 100 us waits (short_wait) and one 10 ms wait (long_wait), each a FUTEX_WAIT that nobody wakes
// and that ends by its timeout. A steady mix, so two captures at different --block-rate
// estimate the same totals. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o futex_mix futex_mix.c
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int word;
volatile unsigned long sink;

static void futex_wait_ns(long ns) {
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
}

__attribute__((noinline)) void short_wait(void) {
    futex_wait_ns(100 * 1000);
    sink++;
}

__attribute__((noinline)) void long_wait(void) {
    futex_wait_ns(10 * 1000 * 1000);
    sink++;
}

static void *run(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "waiter");
    for (;;) {
        for (int i = 0; i < 9; i++)
            short_wait();
        long_wait();
    }
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
