// A thread that starts after the profiler attached: main sleeps argv[1] seconds (default 2),
// then starts a thread that burns CPU in late_worker_spin() forever. Main itself only sleeps.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o late_thread late_thread.c
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline)) void late_worker_spin(void) {
    for (;;)
        for (volatile unsigned long i = 0; i < 1000000UL; i++)
            sink += i;
}

static void *late_worker(void *arg) {
    (void)arg;
    late_worker_spin();
    return NULL;
}

int main(int argc, char **argv) {
    double delay = argc > 1 ? atof(argv[1]) : 2.0;
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    usleep((useconds_t)(delay * 1e6));
    pthread_t t;
    if (pthread_create(&t, NULL, late_worker, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    printf("late thread started\n");
    fflush(stdout);
    pthread_join(t, NULL);
    return 0;
}
