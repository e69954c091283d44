// gomany has N goroutines parked in a channel receive (a leak of N), for the bench's dump
// time by goroutine count, and one goroutine counting as fast as it can, whose count it
// writes to COUNTER every 10 ms: the target's progress while it is dumped (it is not stopped).
// Prints "ready" once all N are parked.
//
// Usage: gomany N COUNTER
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
)

//go:noinline
func leaked(ch chan int) {
	<-ch
}

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	counter := os.Args[2]
	ch := make(chan int)
	for i := 0; i < n; i++ {
		go leaked(ch)
	}
	var count atomic.Int64
	go func() {
		for {
			count.Add(1)
		}
	}()
	for runtime.NumGoroutine() < n+2 {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("ready")
	for {
		time.Sleep(10 * time.Millisecond)
		os.WriteFile(counter+".tmp", []byte(strconv.FormatInt(count.Load(), 10)), 0o644)
		os.Rename(counter+".tmp", counter)
	}
}
