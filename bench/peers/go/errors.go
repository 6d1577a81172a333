// SPDX-License-Identifier: BSD-2-Clause
package main

import (
	"errors"
	"testing"

	pkgerrors "github.com/pkg/errors"
)

var sinkErr error

func init() {
	register("peer.go.errors_new", false, func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sinkErr = errors.New("connection refused")
		}
	})
	register("peer.go.pkg_errors_new", false, func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sinkErr = pkgerrors.New("connection refused")
		}
	})
	base := errors.New("connection refused")
	register("peer.go.pkg_errors_wrap", false, func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sinkErr = pkgerrors.Wrap(base, "dialing backend")
		}
	})
}
