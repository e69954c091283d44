// A process that becomes another program when told: spins in first_binary_spin() and sleeps
// in first_binary_nap(), 20 ms each, until SIGUSR1, then execs argv[1] (exec_second, a
// different binary) with the same pid.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o exec_first exec_first.c
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;
static volatile sig_atomic_t exec_now;

static void on_usr1(int sig) {
    (void)sig;
    exec_now = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void first_binary_spin(double until) {
    while (now() < until)
        for (volatile int i = 0; i < 100000; i++)
            sink += i;
}

__attribute__((noinline)) void first_binary_nap(void) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: exec_first PATH-OF-exec_second\n");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    while (!exec_now) {
        first_binary_spin(now() + 0.02);
        first_binary_nap();
    }
    char *args[] = {argv[1], NULL};
    execv(argv[1], args);
    perror("execv");
    return 1;
}
