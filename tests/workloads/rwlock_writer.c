// A writer that starves readers: the writer holds rw_lock for writing ~5 ms at a time
// (writer_section), two readers take it for reading ~10 us (reader_section) and block while the
// writer holds it. The delay is caused by the writer's section. Runs until killed.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o rwlock_writer rwlock_writer.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

pthread_rwlock_t rw_lock = PTHREAD_RWLOCK_INITIALIZER;
volatile unsigned long sink;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

__attribute__((noinline)) void work_us(long us) {
    long end = now_ns() + us * 1000;
    while (now_ns() < end)
        sink++;
}

__attribute__((noinline)) void writer_section(void) {
    pthread_rwlock_wrlock(&rw_lock);
    work_us(5000);
    pthread_rwlock_unlock(&rw_lock);
}

__attribute__((noinline)) void reader_section(void) {
    pthread_rwlock_rdlock(&rw_lock);
    work_us(10);
    pthread_rwlock_unlock(&rw_lock);
}

static void *writer(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "writer");
    for (;;) {
        writer_section();
        usleep(2000);
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "reader");
    for (;;) {
        reader_section();
        usleep(200);
    }
    return NULL;
}

int main(void) {
    pthread_t t[3];
    pthread_create(&t[0], NULL, writer, NULL);
    pthread_create(&t[1], NULL, reader, NULL);
    pthread_create(&t[2], NULL, reader, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
