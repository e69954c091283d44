// gohot burns CPU in main.hotLoop forever: the Go workload of the CPU-profile tests.
package main

import (
	"fmt"
	"os"
)

var sink uint64

// hotLoop does pure CPU work; kept out of line so it is its own frame.
//
//go:noinline
func hotLoop(n int) uint64 {
	var s uint64
	for i := 0; i < n; i++ {
		s = s*6364136223846793005 + uint64(i)
		s ^= s >> 29
	}
	return s
}

func main() {
	fmt.Printf("pid %d\nready\n", os.Getpid())
	for {
		sink += hotLoop(5_000_000)
	}
}
