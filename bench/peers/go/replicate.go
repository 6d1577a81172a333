// SPDX-License-Identifier: BSD-2-Clause
package main

import (
	"context"
	"sync"
	"testing"
)

// The seed's replicated requests: four goroutines race, the first answer goes to a done channel,
// the context cancels the rest, a WaitGroup waits for them (the shape of replicate.4).
func init() {
	register("peer.go.replicate_4", false, func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan int, 4)
			var wg sync.WaitGroup
			wg.Add(4)
			for k := 0; k < 4; k++ {
				go func(k int) {
					defer wg.Done()
					select {
					case <-ctx.Done():
					case done <- k:
					}
				}(k)
			}
			sinkInt = <-done
			cancel()
			wg.Wait()
		}
	})
}
