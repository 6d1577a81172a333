// SPDX-License-Identifier: BSD-2-Clause
package main

// peer.go.xrate_keyed_1m: what a Go server would write for per-key limits: a map of
// x/time/rate limiters behind a sync.RWMutex, a million keys preloaded, one random key per op
// (RLock lookup, then AllowN; a miss inserts under Lock). Time is read once per 16 ops, as the
// atscale row does.

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

const keyedN = 1000000

type keyedLimiters struct {
	mu sync.RWMutex
	m  map[[4]byte]*rate.Limiter
}

var (
	keyedOnce sync.Once
	keyed1m   *keyedLimiters
)

func keyOf(i uint32) [4]byte {
	v := i * 2654435761
	return [4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
}

func newKeyedLimiter() *rate.Limiter { return rate.NewLimiter(1000000, 100) }

func (k *keyedLimiters) get(key [4]byte) *rate.Limiter {
	k.mu.RLock()
	l := k.m[key]
	k.mu.RUnlock()
	if l == nil {
		k.mu.Lock()
		if l = k.m[key]; l == nil {
			l = newKeyedLimiter()
			k.m[key] = l
		}
		k.mu.Unlock()
	}
	return l
}

func init() {
	register("peer.go.xrate_keyed_1m", false, func(b *testing.B) {
		keyedOnce.Do(func() {
			keyed1m = &keyedLimiters{m: make(map[[4]byte]*rate.Limiter, keyedN)}
			for i := uint32(0); i < keyedN; i++ {
				keyed1m.m[keyOf(i)] = newKeyedLimiter()
			}
		})
		x := uint64(0x9e3779b97f4a7c15)
		now := time.Now()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i&15 == 0 {
				now = time.Now()
			}
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			idx := uint32(((x >> 32) * keyedN) >> 32)
			sinkBool = keyed1m.get(keyOf(idx)).AllowN(now, 1)
		}
	})
}
