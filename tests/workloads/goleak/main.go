// goleak has known goroutine populations, for the goroutine dump tests: 100 goroutines leaked
// in a channel receive, 3 waiting for a sync.Mutex that main holds, one in time.Sleep, two
// deadlocked on two accounts' mutexes (each transfer locks its source, then its
// destination), and main blocked in an empty select. Once they are all parked it prints its own goroutine dump
// (between "own dump begin" and "own dump end"), its own count (runtime.NumGoroutine) and
// "ready".
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

var mu sync.Mutex

//go:noinline
func leakedReceiver(ch chan int) {
	<-ch // LEAK_LINE
}

//go:noinline
func lockWorker(wg *sync.WaitGroup) {
	wg.Done()
	mu.Lock() // LOCK_LINE
	mu.Unlock()
}

type account struct {
	name    string
	mu      sync.Mutex
	balance int
}

// transfer locks from, then to: two transfers the other way round deadlock.
//
//go:noinline
func transfer(from, to *account, started *sync.WaitGroup) {
	from.mu.Lock()
	defer from.mu.Unlock()
	started.Done()
	started.Wait()
	to.mu.Lock() // DEADLOCK_LINE
	defer to.mu.Unlock()
	from.balance--
	to.balance++
}

//go:noinline
func sleeper() {
	time.Sleep(time.Hour) // SLEEP_LINE
}

func main() {
	ch := make(chan int)
	for i := 0; i < 100; i++ {
		go leakedReceiver(ch)
	}
	mu.Lock()
	var wg sync.WaitGroup
	wg.Add(3)
	for i := 0; i < 3; i++ {
		go lockWorker(&wg)
	}
	wg.Wait()
	a, b := &account{name: "a"}, &account{name: "b"}
	var started sync.WaitGroup
	started.Add(2)
	go transfer(a, b, &started)
	go transfer(b, a, &started)
	go sleeper()
	// Let every goroutine park before counting.
	time.Sleep(300 * time.Millisecond)
	// Its own dump (Go's debug=2 text), for the tests to compare with the agent's.
	fmt.Println("own dump begin")
	pprof.Lookup("goroutine").WriteTo(os.Stdout, 2)
	fmt.Println("own dump end")
	fmt.Printf("goroutines %d\nready\n", runtime.NumGoroutine())
	select {}
}
