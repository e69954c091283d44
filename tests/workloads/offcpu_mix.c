// Known off-CPU behaviour for the off-CPU profile tests, one thread per kind of wait:
//   sleeper: nanosleep(100 ms) in a loop        -> wait_class=sleep, under sleep_forever()
//   poller:  epoll_wait(100 ms timeout) on an empty epoll set -> wait_class=io, under poll_forever()
//   spinner: pure CPU work                      -> off-CPU time ~ 0, under spin_forever()
// Prints "ready" once all threads run. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o offcpu_mix offcpu_mix.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline)) void sleep_forever(void) {
    for (;;) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        sink++;
    }
}

__attribute__((noinline)) void poll_forever(void) {
    int ep = epoll_create1(0);
    struct epoll_event ev;
    for (;;) {
        epoll_wait(ep, &ev, 1, 100);
        sink++;
    }
}

__attribute__((noinline)) void spin_forever(void) {
    unsigned long x = 1;
    for (;;) {
        for (int i = 0; i < 1000000; i++) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
            __asm__ volatile("" : "+r"(x));
        }
        sink = x;
    }
}

static void *run(void *arg) {
    const char *name = arg;
    pthread_setname_np(pthread_self(), name);
    if (name[0] == 's' && name[1] == 'l')
        sleep_forever();
    else if (name[0] == 'p')
        poll_forever();
    else
        spin_forever();
    return NULL;
}

int main(void) {
    pthread_t t[3];
    pthread_create(&t[0], NULL, run, "sleeper");
    pthread_create(&t[1], NULL, run, "poller");
    pthread_create(&t[2], NULL, run, "spinner");
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
