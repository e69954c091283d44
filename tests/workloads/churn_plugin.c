// The shared object churn.c loads with dlopen after it started: its waits must be symbolized
// although the library was not mapped when the agent attached.
// Build: gcc -O1 -g -fno-omit-frame-pointer -shared -fPIC -o libchurn_plugin.so churn_plugin.c
#include <time.h>

__attribute__((noinline)) void plugin_nap(void) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, 0);
}
