// What exec_first becomes: spins in second_binary_spin() and sleeps in second_binary_nap(),
// 20 ms each, forever.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o exec_second exec_second.c
#include <stdio.h>
#include <time.h>

volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void second_binary_spin(double until) {
    while (now() < until)
        for (volatile int i = 0; i < 100000; i++)
            sink += i;
}

__attribute__((noinline)) void second_binary_nap(void) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

int main(void) {
    printf("second binary running\n");
    fflush(stdout);
    for (;;) {
        second_binary_spin(now() + 0.02);
        second_binary_nap();
    }
}
