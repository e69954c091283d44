// Soak target: churns threads (about 1,000 created and exited per second), forks and execs
// itself, dlopens a library after it started (argv[2], a shared object with plugin_nap()),
// and keeps one thread recursing 500 frames deep before each wait.
//
// Runs argv[1] rounds of about one second each, then prints one summary line that depends on
// the number of rounds only, not on timing or on anything watching it:
//   done rounds=R threads=T forks=F sum=S plugin_calls=P
// and exits 0. A child started with argv[1] == "child" exits 7 at once; any other child
// status makes the parent exit 3.
// Build: gcc -O1 -g -fno-omit-frame-pointer -pthread -o churn churn.c
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define THREADS_PER_ROUND 1000
#define BATCH 10
#define FORKS_PER_ROUND 5
#define DEPTH 500

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long shared_sum;
static atomic_int stop_deep;

static void nap_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) static void *churn_worker(void *arg) {
    unsigned long i = (unsigned long)arg;
    pthread_mutex_lock(&shared_lock);
    shared_sum += i;
    pthread_mutex_unlock(&shared_lock);
    return NULL;
}

// Recurses `n` frames, waits at the bottom, and returns a value the caller checks.
__attribute__((noinline)) static unsigned long deep_recurse(int n) {
    if (n == 0) {
        nap_us(20000);
        return 1;
    }
    volatile unsigned long here = (unsigned long)n;
    return deep_recurse(n - 1) + (here > 0 ? 1 : 0);
}

static void *deep_thread(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_deep)) {
        if (deep_recurse(DEPTH) != DEPTH + 1) {
            fprintf(stderr, "deep_recurse returned a wrong value\n");
            exit(4);
        }
    }
    return NULL;
}

static void *plugin_thread(void *arg) {
    void (*nap)(void) = (void (*)(void))arg;
    nap();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0)
        return 7;
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    const char *plugin = argc > 2 ? argv[2] : NULL;
    printf("pid %d\nready\n", getpid());
    fflush(stdout);

    pthread_t deep;
    if (pthread_create(&deep, NULL, deep_thread, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    unsigned long threads = 0, forks = 0, plugin_calls = 0, next = 0;
    void *lib = NULL;
    void (*nap)(void) = NULL;
    for (int r = 0; r < rounds; r++) {
        // The library arrives after the start, and is reloaded every 5 rounds.
        if (plugin && r >= 2) {
            if (lib && r % 5 == 0) {
                dlclose(lib);
                lib = NULL;
            }
            if (!lib) {
                lib = dlopen(plugin, RTLD_NOW);
                if (!lib) {
                    fprintf(stderr, "dlopen %s: %s\n", plugin, dlerror());
                    return 5;
                }
                nap = (void (*)(void))dlsym(lib, "plugin_nap");
                if (!nap) {
                    fprintf(stderr, "dlsym plugin_nap: %s\n", dlerror());
                    return 5;
                }
            }
            pthread_t p;
            if (pthread_create(&p, NULL, plugin_thread, (void *)nap) != 0) {
                perror("pthread_create");
                return 1;
            }
            pthread_join(p, NULL);
            plugin_calls++;
        }
        for (int b = 0; b < THREADS_PER_ROUND / BATCH; b++) {
            pthread_t t[BATCH];
            for (int k = 0; k < BATCH; k++) {
                if (pthread_create(&t[k], NULL, churn_worker, (void *)next++) != 0) {
                    perror("pthread_create");
                    return 1;
                }
            }
            for (int k = 0; k < BATCH; k++)
                pthread_join(t[k], NULL);
            threads += BATCH;
            nap_us(8000);
        }
        for (int f = 0; f < FORKS_PER_ROUND; f++) {
            pid_t c = fork();
            if (c < 0) {
                perror("fork");
                return 1;
            }
            if (c == 0) {
                execl("/proc/self/exe", argv[0], "child", (char *)NULL);
                _exit(6);
            }
            int st;
            if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 7) {
                fprintf(stderr, "child %d ended with status %d\n", c, st);
                return 3;
            }
            forks++;
        }
    }
    atomic_store(&stop_deep, 1);
    pthread_join(deep, NULL);
    if (lib)
        dlclose(lib);
    printf("done rounds=%d threads=%lu forks=%lu sum=%llu plugin_calls=%lu\n", rounds, threads,
           forks, shared_sum, plugin_calls);
    fflush(stdout);
    return 0;
}
