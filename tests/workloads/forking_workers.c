// A parent that forks workers after the profiler attached, as a pre-forking server does when
// load comes: main prints "ready", sleeps argv[1] seconds (default 1; a negative value waits
// for SIGUSR1 instead, so a test forks once the profiler said it attached), then forks argv[2]
// workers (default 3) and prints "forked PID" for each. Each worker burns argv[3] seconds of
// its own CPU (default 0.3) in worker_burn(), then blocks reading a pipe in worker_wait()
// until the parent writes to it argv[4] seconds after the fork (default 1), then exits. The
// parent then waits for them in waitpid() and sleeps in parent_idle() forever.
// Build: gcc -O1 -g -fno-omit-frame-pointer -o forking_workers forking_workers.c
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void worker_burn(double seconds) {
    double end = cpu_now() + seconds;
    while (cpu_now() < end)
        for (volatile unsigned long i = 0; i < 100000UL; i++)
            sink += i;
}

__attribute__((noinline)) void worker_wait(int fd) {
    char c;
    if (read(fd, &c, 1) != 1)
        perror("read");
}

__attribute__((noinline)) void parent_idle(void) {
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    double delay = argc > 1 ? atof(argv[1]) : 1.0;
    int n = argc > 2 ? atoi(argv[2]) : 3;
    double burn = argc > 3 ? atof(argv[3]) : 0.3;
    double release = argc > 4 ? atof(argv[4]) : 1.0;
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        return 1;
    }
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    printf("pid %d\nready\n", getpid());
    fflush(stdout);
    if (delay < 0) {
        int sig;
        sigwait(&usr1, &sig);
    } else {
        usleep((useconds_t)(delay * 1e6));
    }
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            return 1;
        }
        if (p == 0) {
            close(fds[1]);
            worker_burn(burn);
            worker_wait(fds[0]);
            _exit(0);
        }
        printf("forked %d\n", p);
        fflush(stdout);
    }
    usleep((useconds_t)(release * 1e6));
    for (int i = 0; i < n; i++)
        if (write(fds[1], "x", 1) != 1)
            perror("write");
    for (int i = 0; i < n; i++)
        wait(NULL);
    printf("workers done\n");
    fflush(stdout);
    parent_idle();
    return 0;
}
