// SPDX-License-Identifier: BSD-2-Clause
package main

import (
	"testing"

	"golang.org/x/time/rate"
)

var sinkRateOK bool

// The same setup as atscale's limiter.allow rows: 10^10 tokens per second and a burst of 2^32, so
// every Allow is granted and what is timed is the limiter itself (its mutex, time.Now, float math).
func init() {
	register("peer.go.xrate_allow", false, func(b *testing.B) {
		lim := rate.NewLimiter(rate.Limit(1e10), 1<<32)
		ok := true
		for i := 0; i < b.N; i++ {
			ok = lim.Allow() && ok
		}
		sinkRateOK = ok
	})
	register("peer.go.xrate_allow_parallel", true, func(b *testing.B) {
		lim := rate.NewLimiter(rate.Limit(1e10), 1<<32)
		b.RunParallel(func(pb *testing.PB) {
			ok := true
			for pb.Next() {
				ok = lim.Allow() && ok
			}
			sinkRateOK = ok
		})
	})
}
