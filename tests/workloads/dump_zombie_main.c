// Thread-dump workload: the main thread exits with pthread_exit (it becomes a zombie) while a
// worker thread lives on, sleeping in keep_serving(). Prints "ready" first; runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o dump_zombie_main dump_zombie_main.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) void keep_serving(void) {
    for (;;)
        sleep(1000);
}

static void *server(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "server");
    keep_serving();
    return NULL;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    usleep(100 * 1000);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    pthread_exit(NULL);
}
