package channel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// FuzzHostHandshake plays a guest that sends the fuzzer's bytes, then ends its side of the
// stream, to the host's side of the handshake (Connect, with an init payload or without) over a
// unix socket pair. The host must not panic, must return as soon as the bytes are used up (the
// guest's EOF; the context's 10 s are only a backstop), must fail with ErrHandshake or
// ErrInitRefused unless the bytes completed a handshake, and must keep its error message short.
func FuzzHostHandshake(f *testing.F) {
	for _, s := range []string{
		"CELL1 PONG 1\nCELL1 READY 1\n",
		"junk\nCELL1 PONG 7\nCELL1 PONG 8\nCELL1 APPLIED 2\nCELL1 READY 7\nyamux bytes",
		"CELL1 PONG 3\nCELL1 REFUSED 5\nnope!CELL1 READY 3\n",
		"CELL1 PONG 3\nCELL1 REFUSED 4096\nshort",
		"CELL1 PONG 3\nCELL1 REFUSED 18446744073709551615\n",
		"CELL1 READY 0\nCELL1 PONG 0\nCELL1 READY 0\n",
		"CELL1 PONG 1\nCELL1 APPLIED 3\nCELL1 READY 1\n",
		"CELL1 PONG 1\r\nCELL1 READY 1\r\n",
		"CELL1 PONG 1\n" + strings.Repeat("x", 200) + "CELL1 READY 1\n",
		"CELL1 PONG 01\nCELL1 READY 1\n",
		"\x00\xff\n\n\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, guest []byte, withInit bool) {
		var init []byte
		if withInit {
			init = []byte("{}")
		}
		hostEnd, guestEnd := socketPair(t)
		go func() { _, _ = io.Copy(io.Discard, guestEnd) }() // the host's pings and GO
		go func() {
			_, _ = guestEnd.Write(guest)
			_ = guestEnd.(*net.UnixConn).CloseWrite()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		h, err := Connect(ctx, hostEnd, log, init)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the host took %v over %d bytes that end", d, len(guest))
		}
		if err == nil {
			defer func() { _ = h.Close() }()
			if !readyAfterPong(guest) {
				t.Fatalf("a handshake completed without a ready for the first pong: %q", guest)
			}
			if withInit && !appliedLine(guest, uint64(len(init))) {
				t.Fatalf("an init was taken as applied: %q", guest)
			}
			return
		}
		if !errors.Is(err, ErrHandshake) && !errors.Is(err, ErrInitRefused) {
			t.Fatalf("err = %v, want ErrHandshake or ErrInitRefused", err)
		}
		if len(err.Error()) > maxInitError+256 {
			t.Fatalf("a %d-byte error", len(err.Error()))
		}
	})
}

// appliedLine says whether guest has an APPLIED line for an init of n bytes (its number as the
// host parses it: "02" is 2, as "01" is 1 in a PONG).
func appliedLine(guest []byte, n uint64) bool {
	for _, line := range strings.Split(string(guest), "\n") {
		if verb, m, ok := parse(line); ok && verb == "APPLIED" && m == n {
			return true
		}
	}
	return false
}

// readyAfterPong says whether guest has a PONG line and, after it, a READY line for its number.
func readyAfterPong(guest []byte) bool {
	var first *uint64
	for _, line := range strings.Split(string(guest), "\n") {
		verb, n, ok := parse(line)
		switch {
		case ok && verb == "PONG" && first == nil:
			first = &n
		case ok && verb == "READY" && first != nil && n == *first:
			return true
		}
	}
	return false
}

// TestConnectBoundsAnEndlessLine: a guest that sends one line without end is cut off after
// maxHandshakeBytes, and the host keeps no more than a short line of it.
func TestConnectBoundsAnEndlessLine(t *testing.T) {
	hostEnd, guestEnd := socketPair(t)
	go func() { _, _ = io.Copy(io.Discard, guestEnd) }()
	go func() {
		junk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			if _, err := guestEnd.Write(junk); err != nil {
				return
			}
		}
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Connect(ctx, hostEnd, slog.New(slog.DiscardHandler), nil)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("err = %v, want ErrHandshake for too many bytes", err)
	}
	// The host read maxHandshakeBytes (1 MiB): allocating anywhere near that means it buffered.
	if n := after.TotalAlloc - before.TotalAlloc; n > maxHandshakeBytes/4 {
		t.Fatalf("the host allocated %d bytes reading an endless line", n)
	}
}
