// A hung service: its main thread takes `stuck_lock` and never lets it go while it keeps
// working (a CPU loop with short sleeps), `lock_waiter` blocks on that lock for good,
// `cond_idler` waits on a condition variable nobody signals (an idle worker) and
// `pipe_reader` blocks in read() on a pipe nobody writes. Every wait starts before the agent
// attaches (the test waits after "ready") and lasts as long as the process.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

pthread_mutex_t stuck_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER;
static int pipe_fds[2];
static volatile unsigned long sink;

__attribute__((noinline)) static void take_the_lock(void) {
    pthread_mutex_lock(&stuck_lock); // blocks forever: main holds it
    pthread_mutex_unlock(&stuck_lock);
}

static void *lock_waiter(void *arg) {
    (void)arg;
    take_the_lock();
    return NULL;
}

__attribute__((noinline)) static void wait_for_work(void) {
    pthread_mutex_lock(&idle_mu);
    pthread_cond_wait(&idle_cv, &idle_mu); // never signalled
    pthread_mutex_unlock(&idle_mu);
}

static void *cond_idler(void *arg) {
    (void)arg;
    wait_for_work();
    return NULL;
}

__attribute__((noinline)) static void read_request(void) {
    char c;
    if (read(pipe_fds[0], &c, 1) < 0) // nobody writes
        perror("read");
}

static void *pipe_reader(void *arg) {
    (void)arg;
    read_request();
    return NULL;
}

// The holder: keeps the lock while it works, on CPU about half the time.
__attribute__((noinline)) static void hold_and_work(void) {
    for (;;) {
        for (unsigned long i = 0; i < 20000000UL; i++)
            sink += i;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int main(void) {
    if (pipe(pipe_fds) != 0) {
        perror("pipe");
        return 1;
    }
    pthread_mutex_lock(&stuck_lock);
    pthread_t t[3];
    pthread_create(&t[0], NULL, lock_waiter, NULL);
    pthread_setname_np(t[0], "lock_waiter");
    pthread_create(&t[1], NULL, cond_idler, NULL);
    pthread_setname_np(t[1], "cond_idler");
    pthread_create(&t[2], NULL, pipe_reader, NULL);
    pthread_setname_np(t[2], "pipe_reader");
    usleep(200 * 1000);
    printf("ready pid=%d\n", getpid());
    fflush(stdout);
    hold_and_work();
    return 0;
}
