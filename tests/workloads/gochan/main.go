// gochan is the bench's channel-heavy Go program: PAIRS pairs of goroutines hand a token back
// and forth over unbuffered channels, HANDOFFS times per pair, each hand-off through a
// sync.Mutex-guarded counter too. With OWN=1 it turns on Go's own block and mutex profiling at
// rate 1 (SetBlockProfileRate(1), SetMutexProfileFraction(1)), the cost the agent is compared
// with. The bench's start protocol: "ready", a line on stdin, the work, "elapsed_ns N".
//
// Usage: gochan PAIRS HANDOFFS OWN
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

var (
	mu    sync.Mutex
	total int
)

// player receives the token n times and passes it on after each, but the second of a pair
// keeps it the last time (the first got it from main, so the sends and receives match).
func player(in, out chan int, n int, second bool, done *sync.WaitGroup) {
	defer done.Done()
	for i := 0; i < n; i++ {
		v := <-in
		mu.Lock()
		total++
		mu.Unlock()
		if !second || i < n-1 {
			out <- v + 1
		}
	}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: gochan PAIRS HANDOFFS OWN")
		os.Exit(2)
	}
	pairs, _ := strconv.Atoi(os.Args[1])
	n, _ := strconv.Atoi(os.Args[2])
	if os.Args[3] == "1" {
		runtime.SetBlockProfileRate(1)
		runtime.SetMutexProfileFraction(1)
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	t0 := time.Now()
	var done sync.WaitGroup
	for p := 0; p < pairs; p++ {
		a, b := make(chan int), make(chan int)
		done.Add(2)
		go player(a, b, n, false, &done)
		go player(b, a, n, true, &done)
		a <- 0
	}
	done.Wait()
	fmt.Printf("elapsed_ns %d\n", time.Since(t0).Nanoseconds())
}
