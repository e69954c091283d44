// Known CPU split for the profiler tests: hot_a() does 3 units of work, hot_b() 1 unit, with the
// same inner loop, so hot_a gets 3/4 of the CPU time and hot_b 1/4. Runs until killed.
// The loop is expanded in each function (a macro, not a helper the compiler could inline and that
// would then be the innermost frame). Each ends with a call so it is not a leaf: GCC keeps the
// frame pointer in non-leaf functions only, and a frame-pointer walk from a frameless leaf loses
// the leaf's caller.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o cpu_split cpu_split.c
#include <stdio.h>
#include <unistd.h>

#define UNIT 1000000UL /* iterations: about 1 ms */

/* A dependent multiply-add chain: its speed is the latency of imul+add, whatever the code's
 * alignment, so 3 units cost 3 times 1 unit. The empty asm keeps the compiler from folding it. */
#define WORK(units)                                                                                \
    do {                                                                                           \
        unsigned long x = sink;                                                                    \
        for (unsigned long i = 0; i < (units) * UNIT; i++) {                                       \
            x = x * 6364136223846793005UL + 1442695040888963407UL;                                 \
            __asm__ volatile("" : "+r"(x));                                                        \
        }                                                                                          \
        publish(x);                                                                                \
    } while (0)

volatile unsigned long sink;

__attribute__((noinline)) void publish(unsigned long x) {
    sink = x;
}

__attribute__((noinline)) void hot_a(void) {
    WORK(3);
}

__attribute__((noinline)) void hot_b(void) {
    WORK(1);
}

int main(void) {
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;) {
        hot_a();
        hot_b();
    }
}
