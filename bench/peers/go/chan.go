// SPDX-License-Identifier: BSD-2-Clause
package main

import (
	"runtime"
	"sync"
	"testing"
)

var sinkInt int

// The shapes of bench/bench_chan.c on Go's buffered channels (capacity 1024), run at GOMAXPROCS
// --threads (the "parallel" flag only sets that here: each row starts its own goroutines). ns/op
// is per message (per round trip for pingpong), as in the C rows.
func init() {
	register("peer.go.chan_spsc", true, func(b *testing.B) {
		c := make(chan int, 1024)
		done := make(chan struct{})
		go func() {
			s := 0
			for i := 0; i < b.N; i++ {
				s += <-c
			}
			sinkInt = s
			close(done)
		}()
		for i := 0; i < b.N; i++ {
			c <- i
		}
		<-done
	})
	register("peer.go.chan_mpmc_2x2", true, func(b *testing.B) {
		c := make(chan int, 1024)
		half := (b.N + 1) / 2
		var wg sync.WaitGroup
		wg.Add(4)
		for p := 0; p < 2; p++ {
			go func() {
				defer wg.Done()
				for i := 0; i < half; i++ {
					c <- i
				}
			}()
			go func() {
				defer wg.Done()
				s := 0
				for i := 0; i < half; i++ {
					s += <-c
				}
				runtime.KeepAlive(s)
			}()
		}
		wg.Wait()
	})
	register("peer.go.chan_pingpong", true, func(b *testing.B) {
		ping, pong := make(chan int, 1), make(chan int, 1)
		go func() {
			for i := 0; i < b.N; i++ {
				pong <- <-ping
			}
		}()
		for i := 0; i < b.N; i++ {
			ping <- i
			<-pong
		}
	})
}
