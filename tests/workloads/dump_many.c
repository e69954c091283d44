// Thread-dump workload: N threads (first argument) in three kinds of waits, a third each:
// thread i waits on a condition variable (i % 3 == 0), sleeps (1), or reads an empty pipe (2).
// With a second argument FILE, one more thread ("counter") counts in a loop and stores the
// count in FILE (8 bytes, shared mapping) so a test can watch it progress during a dump.
// Prints "ready" once every waiter is in its wait; runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o dump_many dump_many.c
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int started;
static int pipe_fds[2];
static volatile uint64_t *count;

__attribute__((noinline)) void wait_on_cond(void) {
    pthread_mutex_lock(&lock);
    for (;;)
        pthread_cond_wait(&never, &lock);
}

__attribute__((noinline)) void sleep_long(void) {
    for (;;)
        sleep(1000);
}

__attribute__((noinline)) void read_pipe(void) {
    char c;
    for (;;)
        if (read(pipe_fds[0], &c, 1) <= 0)
            return;
}

static void *waiter(void *arg) {
    long i = (long)arg;
    char name[16];
    snprintf(name, sizeof name, "w-%ld", i);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&lock);
    started++;
    pthread_mutex_unlock(&lock);
    switch (i % 3) {
    case 0:
        wait_on_cond();
        break;
    case 1:
        sleep_long();
        break;
    default:
        read_pipe();
    }
    return NULL;
}

__attribute__((noinline)) void count_forever(void) {
    for (;;)
        for (int i = 0; i < 1000; i++)
            *count += 1;
}

static void *counter(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "counter");
    count_forever();
    return NULL;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10;
    if (pipe(pipe_fds) != 0) {
        perror("pipe");
        return 1;
    }
    if (argc > 2) {
        int fd = open(argv[2], O_RDWR | O_CREAT, 0644);
        if (fd < 0 || ftruncate(fd, 8) != 0) {
            perror(argv[2]);
            return 1;
        }
        count = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (count == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        pthread_t t;
        pthread_create(&t, NULL, counter, NULL);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, waiter, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    for (;;) {
        pthread_mutex_lock(&lock);
        int s = started;
        pthread_mutex_unlock(&lock);
        if (s == n)
            break;
        usleep(1000);
    }
    usleep(200 * 1000); // every waiter is in its wait by now
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
