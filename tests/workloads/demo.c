// Stallscope's demo workload (`cargo xtask demo`). Runs until killed. Named threads:
//   cruncher  CPU work split 3:1 between crunch_parse() and crunch_checksum()
//   holder    takes `table_lock` and keeps it for 200 ms (slow_critical_section)
//   waiter    blocks on `table_lock` behind the holder (wait_for_table)
//   sleeper   sleeps 100 ms at a time (nap)
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o demo demo.c
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define UNIT 2000000UL /* iterations: about 2 ms of CPU */

/* A dependent multiply-add chain, expanded in place so each function is its own leaf frame. */
#define WORK(units)                                                                                \
    do {                                                                                           \
        unsigned long x = sink;                                                                    \
        for (unsigned long i = 0; i < (units) * UNIT; i++) {                                       \
            x = x * 6364136223846793005UL + 1442695040888963407UL;                                 \
            __asm__ volatile("" : "+r"(x));                                                        \
        }                                                                                          \
        publish(x);                                                                                \
    } while (0)

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned long sink;

__attribute__((noinline)) void publish(unsigned long x) {
    sink = x;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) void crunch_parse(void) {
    WORK(3);
}

__attribute__((noinline)) void crunch_checksum(void) {
    WORK(1);
}

static void *cruncher(void *arg) {
    (void)arg;
    for (;;) {
        crunch_parse();
        crunch_checksum();
    }
    return NULL;
}

__attribute__((noinline)) void slow_critical_section(void) {
    sleep_ms(200);
}

static void *holder(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&table_lock);
        slow_critical_section();
        pthread_mutex_unlock(&table_lock);
        sleep_ms(5);
    }
    return NULL;
}

__attribute__((noinline)) void wait_for_table(void) {
    pthread_mutex_lock(&table_lock);
    sink++;
    pthread_mutex_unlock(&table_lock);
}

static void *waiter(void *arg) {
    (void)arg;
    for (;;) {
        wait_for_table();
        sleep_ms(1);
    }
    return NULL;
}

__attribute__((noinline)) void nap(void) {
    sleep_ms(100);
}

static void *sleeper(void *arg) {
    (void)arg;
    for (;;)
        nap();
    return NULL;
}

static void start(const char *name, void *(*fn)(void *)) {
    pthread_t t;
    if (pthread_create(&t, NULL, fn, NULL) != 0) {
        perror("pthread_create");
        _exit(1);
    }
    pthread_setname_np(t, name);
}

int main(void) {
    start("cruncher", cruncher);
    start("holder", holder);
    start("waiter", waiter);
    start("sleeper", sleeper);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    for (;;)
        pause();
}
