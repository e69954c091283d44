// goparse reads a goroutine dump (Go's debug=2 text) on stdin with panicparse, the parser Go
// users point at their dumps (Debian's golang-github-maruel-panicparse-dev, built in GOPATH
// mode), and prints what it understood, one line per goroutine:
//
//	<id>\t<state>\t<first function>\t<file:line>\t<created by>
//
// then "total N" and "buckets M" (panicparse's aggregation of identical stacks). It exits 1
// when panicparse fails or finds no goroutine.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/maruel/panicparse/v2/stack"
)

func main() {
	opts := stack.DefaultOpts()
	// Parse only: no source files read, no paths guessed.
	opts.GuessPaths = false
	opts.AnalyzeSources = false
	snap, _, err := stack.ScanSnapshot(os.Stdin, io.Discard, opts)
	if err != nil && err != io.EOF {
		fmt.Fprintln(os.Stderr, "panicparse:", err)
		os.Exit(1)
	}
	if snap == nil || len(snap.Goroutines) == 0 {
		fmt.Fprintln(os.Stderr, "panicparse found no goroutine")
		os.Exit(1)
	}
	for _, g := range snap.Goroutines {
		first, at := "", ""
		if len(g.Stack.Calls) > 0 {
			c := g.Stack.Calls[0]
			first, at = c.Func.Complete, fmt.Sprintf("%s:%d", c.RemoteSrcPath, c.Line)
		}
		by := ""
		if len(g.CreatedBy.Calls) > 0 {
			by = g.CreatedBy.Calls[0].Func.Complete
		}
		fmt.Printf("%d\t%s\t%s\t%s\t%s\n", g.ID, g.State, first, at, by)
	}
	fmt.Printf("total %d\n", len(snap.Goroutines))
	fmt.Printf("buckets %d\n", len(snap.Aggregate(stack.AnyValue).Buckets))
}
