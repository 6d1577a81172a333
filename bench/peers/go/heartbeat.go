// SPDX-License-Identifier: BSD-2-Clause
package main

import "testing"

// The seed's heartbeat pulse: a non-blocking send on a 1-slot channel nobody is reading (full
// after the first, so each later pulse is tried and dropped), the shape of bench_heartbeat.c.
func init() {
	register("peer.go.heartbeat_pulse", false, func(b *testing.B) {
		pulse := make(chan struct{}, 1)
		for i := 0; i < b.N; i++ {
			select {
			case pulse <- struct{}{}:
			default:
			}
		}
	})
}
