// SPDX-License-Identifier: BSD-2-Clause
// go-peers: the Go side of atscale-bench. Each file in this folder registers the rows of the Go
// package a user would pick instead of atscale; this program times them with testing.Benchmark
// and prints the runner's JSON lines.
//
//	go-peers [--quick] [--threads N] [--filter PATTERN]
package main

import (
	"flag"
	"fmt"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"testing"
)

type peer struct {
	name     string
	parallel bool // timed with b.RunParallel at --threads goroutines (GOMAXPROCS)
	fn       func(b *testing.B)
}

var peers []peer

func register(name string, parallel bool, fn func(b *testing.B)) {
	peers = append(peers, peer{name, parallel, fn})
}

// selected is atscale-bench's filter: a comma-separated list of substrings or globs, any of which
// selects the row.
func selected(filter, name string) bool {
	if filter == "" {
		return true
	}
	for _, pat := range strings.Split(filter, ",") {
		if strings.ContainsAny(pat, "*?[") {
			if ok, _ := path.Match(pat, name); ok {
				return true
			}
		} else if strings.Contains(name, pat) {
			return true
		}
	}
	return false
}

func main() {
	quick := flag.Bool("quick", false, "fewer, shorter repetitions")
	threads := flag.Int("threads", runtime.NumCPU(), "goroutines for parallel rows")
	filter := flag.String("filter", "", "substring or glob of row names")
	flag.Parse()
	reps := 11
	if *quick {
		reps = 3
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].name < peers[j].name })
	for _, p := range peers {
		if !selected(*filter, p.name) {
			continue
		}
		n := 1
		if p.parallel {
			n = *threads
		}
		runtime.GOMAXPROCS(n)
		samples := make([]float64, 0, reps)
		testing.Benchmark(p.fn) // warm-up
		for i := 0; i < reps; i++ {
			r := testing.Benchmark(p.fn)
			if r.N == 0 {
				break
			}
			samples = append(samples, float64(r.T.Nanoseconds())/float64(r.N))
		}
		if len(samples) == 0 {
			fmt.Fprintf(os.Stderr, "go-peers: %s did not run\n", p.name)
			continue
		}
		sort.Float64s(samples)
		fmt.Printf("{\"name\": \"%s\", \"ns_per_op\": %.3f, \"min\": %.3f, \"max\": %.3f, \"threads\": %d, \"peer\": true}\n",
			p.name, samples[len(samples)/2], samples[0], samples[len(samples)-1], n)
	}
}
