// SPDX-License-Identifier: BSD-2-Clause
package main

import (
	"context"
	"testing"
	"time"
)

var sinkBool bool

// The same shapes as bench/bench_ctx.c: children of a cancellable parent (a request's context),
// cancelled and released (cancel() is Go's release too).
func init() {
	register("peer.go.ctx_with_cancel", false, func(b *testing.B) {
		parent, stop := context.WithCancel(context.Background())
		defer stop()
		for i := 0; i < b.N; i++ {
			_, cancel := context.WithCancel(parent)
			cancel()
		}
	})
	register("peer.go.ctx_with_timeout", false, func(b *testing.B) {
		parent, stop := context.WithCancel(context.Background())
		defer stop()
		for i := 0; i < b.N; i++ {
			_, cancel := context.WithTimeout(parent, time.Second)
			cancel()
		}
	})
	register("peer.go.ctx_done", false, func(b *testing.B) {
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		done := false
		for i := 0; i < b.N; i++ {
			select {
			case <-ctx.Done():
				done = true
			default:
			}
		}
		sinkBool = done
	})
	register("peer.go.ctx_cancel_1000_children", false, func(b *testing.B) {
		cancels := make([]context.CancelFunc, 1000)
		for i := 0; i < b.N; i++ {
			root, cancelRoot := context.WithCancel(context.Background())
			for k := range cancels {
				_, cancels[k] = context.WithCancel(root)
			}
			cancelRoot()
			for _, c := range cancels {
				c()
			}
		}
	})
}
