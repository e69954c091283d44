// Two call paths that block at the same place with the same registers: one thread calls
// via_short() five times, then via_long() five times, and so on. Both call nap(), which sleeps
// in nanosleep: the instruction pointer, stack pointer and frame pointer at the syscall are the
// same on both paths; only the return address in nap's frame (into via_short or via_long)
// differs. A user-stack cache that trusted registers alone would give the first nap of every
// run of five the previous path's stack.
//   via_short: 5 x 1 ms, via_long: 5 x 3 ms  -> off-CPU time under via_long = 3 x via_short.
// The functions are built without frame pointers, so the agent unwinds them with CFI rows.
// Prints "ready", runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o same_site same_site.c
#include <stdio.h>
#include <time.h>

volatile unsigned long sink;
// Loop bound read at run time, so the compiler cannot unroll the loops into ten call sites.
volatile int run_length = 5;

#define NOFP __attribute__((noinline, optimize("omit-frame-pointer")))

NOFP void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
    sink++;
}

NOFP void via_short(void) {
    nap(1000 * 1000);
    sink++;
}

NOFP void via_long(void) {
    nap(3000 * 1000);
    sink++;
}

int main(void) {
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        for (int i = 0; i < run_length; i++)
            via_short();
        for (int i = 0; i < run_length; i++)
            via_long();
    }
}
