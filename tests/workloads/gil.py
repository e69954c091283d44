"""Four threads running a pure-Python CPU loop forever: they take turns holding the GIL, so
together they get at most about one CPU however many the machine has. Each names its OS thread
gil_worker_N (prctl PR_SET_NAME) so profiles label it; the main thread joins them."""

import ctypes
import sys
import threading

PR_SET_NAME = 15
libc = ctypes.CDLL(None, use_errno=True)


def spin(n):
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(f"gil_worker_{n}".encode()), 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_NAME) failed: errno {ctypes.get_errno()}")
    x = 0
    while True:
        for i in range(10000):
            x = (x + i * i) % 1000003


def main():
    workers = [threading.Thread(target=spin, args=(n,), daemon=True) for n in range(4)]
    for w in workers:
        w.start()
    print("ready", flush=True)
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
