// SPDX-License-Identifier: BSD-2-Clause
package main

import (
	"sync"
	"sync/atomic"
	"testing"
)

var sinkCount atomic.Int64

// The shapes of bench/bench_pool.c in Go: a goroutine spawned and waited for (the seed's
// go + WaitGroup), and a fan-out of 1000 goroutines waited for together (per fan-out).
func init() {
	register("peer.go.goroutine_spawn_wait", false, func(b *testing.B) {
		var wg sync.WaitGroup
		for i := 0; i < b.N; i++ {
			wg.Add(1)
			go func() {
				sinkCount.Add(1)
				wg.Done()
			}()
			wg.Wait()
		}
	})
	register("peer.go.goroutine_fanout_1000", false, func(b *testing.B) {
		var wg sync.WaitGroup
		for i := 0; i < b.N; i++ {
			wg.Add(1000)
			for k := 0; k < 1000; k++ {
				go func() {
					sinkCount.Add(1)
					wg.Done()
				}()
			}
			wg.Wait()
		}
	})
}
