// goblock blocks its goroutines in known proportions, for the goroutine-level block profile
// tests, and keeps Go's own block profile of itself (rate 1: every event) as the ground truth:
// - 3 goroutines in recvSlow take turns receiving from a channel fed every 20 ms: each waits
//   about 60 ms per receive, so about 3 goroutine-seconds blocked per second (chan receive);
// - 2 goroutines in lockWait fight over a sync.Mutex each holds for 5 ms (in time.Sleep,
//   which Go's block profile does not record): about 1 goroutine-second per second (the
//   sync.Mutex wait).
//
// main only sleeps. On SIGUSR1 it writes its own cumulative block and mutex profiles (rate
// and fraction 1) to <dir>/block-<n>.pb.gz and <dir>/mutex-<n>.pb.gz (n = 0, 1, ...); the
// test takes the difference of two around the agent's window. It prints "ready"
// once every goroutine runs.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"
)

var mu sync.Mutex

//go:noinline
func recvSlow(ch chan int) {
	for {
		<-ch // RECV_LINE
	}
}

//go:noinline
func lockWait() {
	for {
		mu.Lock() // LOCK_LINE
		time.Sleep(5 * time.Millisecond)
		mu.Unlock()
	}
}

// write writes profile kind to path, atomically (the test waits for the file).
func write(kind, path string) {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		panic(err)
	}
	if err := pprof.Lookup(kind).WriteTo(f, 0); err != nil {
		panic(err)
	}
	f.Close()
	if err := os.Rename(path+".tmp", path); err != nil {
		panic(err)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goblock DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	runtime.SetBlockProfileRate(1)
	runtime.SetMutexProfileFraction(1)
	ch := make(chan int)
	for i := 0; i < 3; i++ {
		go recvSlow(ch)
	}
	for i := 0; i < 2; i++ {
		go lockWait()
	}
	go func() {
		for {
			time.Sleep(20 * time.Millisecond)
			ch <- 1
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	fmt.Println("ready")
	// main polls for the signal, so that it is never blocked itself in a way Go's block
	// profile records (a wait that began before the agent's window would end inside it).
	for n := 0; ; n++ {
		for len(sigs) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		<-sigs
		for _, kind := range []string{"mutex", "block"} {
			write(kind, fmt.Sprintf("%s/%s-%d.pb.gz", dir, kind, n))
		}
		fmt.Println("wrote", n)
	}
}
