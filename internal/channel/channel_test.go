package channel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		verb string
		n    uint64
		ok   bool
	}{
		{"CELL1 PING 7", "PING", 7, true},
		{"CELL1 READY 18446744073709551615", "READY", 1<<64 - 1, true},
		{"CELL1  PING 7", "", 0, false},
		{"CELL1 PING 7 ", "", 0, false},
		{"CELL1 PING -7", "", 0, false},
		{"CELL1 PING x", "", 0, false},
		{"CELL2 PING 7", "", 0, false},
		{"NG 3CELL1 PING 4", "", 0, false},
		{"", "", 0, false},
	}
	for _, c := range cases {
		verb, n, ok := parse(c.in)
		if verb != c.verb || n != c.n || ok != c.ok {
			t.Errorf("parse(%q) = %q %d %v, want %q %d %v", c.in, verb, n, ok, c.verb, c.n, c.ok)
		}
	}
}

func TestLineReaderSkipsLongLines(t *testing.T) {
	in := strings.Repeat("x", 1000) + "\nCELL1 PING 1\n"
	lr := &lineReader{r: bufioReader(in)}
	line, err := lr.next()
	if err != nil || line != "CELL1 PING 1" {
		t.Fatalf("next = %q, %v", line, err)
	}
}

func TestLineReaderLimit(t *testing.T) {
	lr := &lineReader{r: bufioReader(strings.Repeat("x\n", 100)), limit: 50}
	var err error
	for err == nil {
		_, err = lr.next()
	}
	if !errors.Is(err, ErrHandshake) {
		t.Fatalf("err = %v, want ErrHandshake", err)
	}
}

// lossyPort models QEMU's virtio-serial window: until the guest "opens" its port, everything the
// host writes is dropped, sometimes cutting a write in half.
type lossyPort struct {
	net.Conn
	open  atomic.Bool
	drops atomic.Int64
}

func (l *lossyPort) Write(p []byte) (int, error) {
	if !l.open.Load() {
		l.drops.Add(1)
		if len(p) > 3 && l.drops.Load()%3 == 0 {
			// a torn write: only the tail gets through
			return l.Conn.Write(p[len(p)-3:])
		}
		return len(p), nil
	}
	return l.Conn.Write(p)
}

// socketPair returns the two ends of a unix stream socket pair, buffered by the kernel like
// QEMU's socket for the port. (Over net.Pipe, where a write waits for the other side's read, a
// guest answering a ping while the host writes GO would wait for each other forever.)
func socketPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer func() { _ = f.Close() }()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	return conn(fds[0], "host"), conn(fds[1], "guest")
}

func TestHandshakeThroughLossyWindowAndHTTP(t *testing.T) {
	hostEnd, guestEnd := socketPair(t)
	lossy := &lossyPort{Conn: hostEnd}
	log := slog.New(slog.DiscardHandler)

	// The guest opens its port only after a while.
	go func() {
		time.Sleep(30 * time.Millisecond)
		lossy.open.Store(true)
	}()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	guestErr := make(chan error, 1)
	clock := make(chan time.Time, 2)
	seeds := make(chan []byte, 2)
	go func() {
		sess, err := Serve(guestEnd, log, GuestHooks{Clock: func(t time.Time) { clock <- t }, Seed: func(b []byte) { seeds <- b }})
		if err != nil {
			guestErr <- err
			return
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(payload) })
		mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) { b, _ := io.ReadAll(r.Body); _, _ = w.Write(b) })
		guestErr <- (&http.Server{Handler: mux}).Serve(sess)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := Connect(ctx, lossy, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lossy.drops.Load() == 0 {
		t.Fatal("test did not exercise the lossy window")
	}
	// The host's clock came with GO, once.
	select {
	case got := <-clock:
		if d := time.Since(got); d < 0 || d > 5*time.Second {
			t.Fatalf("the guest was told the time %v, %v off", got, d)
		}
	default:
		t.Fatal("the handshake did not tell the guest the time")
	}
	if len(clock) != 0 {
		t.Fatal("the guest was told the time twice")
	}
	// And fresh randomness, once, before READY.
	select {
	case seed := <-seeds:
		if len(seed) != SeedWords*8 || bytes.Equal(seed, make([]byte, len(seed))) {
			t.Fatalf("the guest was given the seed %x", seed)
		}
	default:
		t.Fatal("the handshake did not give the guest randomness")
	}
	if len(seeds) != 0 {
		t.Fatal("the guest was given randomness twice")
	}
	resp, err := h.HTTPClient().Get("http://envd/blob")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("payload corrupted: got %d bytes", len(got))
	}
	// Several concurrent streams.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := strings.Repeat("m", 10000)
			resp, err := h.HTTPClient().Post("http://envd/echo", "text/plain", strings.NewReader(msg))
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if string(b) != msg {
				t.Error("echo mismatch")
			}
		}()
	}
	wg.Wait()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed after Close")
	}
	select {
	case <-guestErr:
	case <-time.After(5 * time.Second):
		t.Fatal("guest server did not notice the host leaving")
	}
}

// rw is a connection whose reads come from r and whose writes go to w.
type rw struct {
	io.Reader
	io.Writer
}

func TestGuestAnswersOnlyTheNewestQueuedPing(t *testing.T) {
	r, w := io.Pipe()
	var out lockedBuffer
	var clock atomic.Int64
	done := make(chan error, 1)
	go func() {
		_, err := guestHandshake(rw{r, &out}, GuestHooks{Clock: func(t time.Time) { clock.Store(t.UnixNano()) }})
		done <- err
	}()
	waitFor := func(s string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(out.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("guest wrote %q, waiting for %q", out.String(), s)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// Three pings that queued up, then one followed by a partial line (which may be long in
	// coming): each batch gets one answer, to its last complete ping.
	_, _ = io.WriteString(w, "CELL1 PING 1\nCELL1 PING 2\nCELL1 PING 3\n")
	waitFor("PONG 3\n")
	_, _ = io.WriteString(w, "CELL1 PING 4\nCELL1 TI")
	waitFor("PONG 4\n")
	_, _ = io.WriteString(w, "ME 5\nCELL1 GO 4\n")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if want := "CELL1 PONG 3\nCELL1 PONG 4\nCELL1 READY 4\n"; out.String() != want {
		t.Fatalf("guest wrote %q, want %q", out.String(), want)
	}
	if clock.Load() != 5 {
		t.Fatalf("clock = %d ns after the epoch, want 5", clock.Load())
	}
}

// lockedBuffer is a bytes.Buffer for one writer and other readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestConnectHonoursContext(t *testing.T) {
	hostEnd, guestEnd := socketPair(t)
	defer guestEnd.Close()
	go func() { _, _ = io.Copy(io.Discard, guestEnd) }() // a guest that never answers
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Connect(ctx, hostEnd, slog.New(slog.DiscardHandler), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func TestConnectRejectsFloodingGuest(t *testing.T) {
	hostEnd, guestEnd := socketPair(t)
	defer guestEnd.Close()
	go func() { _, _ = io.Copy(io.Discard, guestEnd) }()
	go func() {
		junk := bytes.Repeat([]byte("CELL1 PONG x\n"), 1024)
		for {
			if _, err := guestEnd.Write(junk); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Connect(ctx, hostEnd, slog.New(slog.DiscardHandler), nil)
	if !errors.Is(err, ErrHandshake) {
		t.Fatalf("err = %v, want ErrHandshake", err)
	}
}

// connectWithInit runs Connect with init against a guest served with hooks, over a pipe.
func connectWithInit(t *testing.T, init []byte, hooks GuestHooks) (*Host, error) {
	t.Helper()
	hostEnd, guestEnd := socketPair(t)
	t.Cleanup(func() { _ = guestEnd.Close() })
	log := slog.New(slog.DiscardHandler)
	go func() {
		sess, err := Serve(guestEnd, log, hooks)
		if err != nil {
			return
		}
		_ = (&http.Server{Handler: http.NotFoundHandler()}).Serve(sess)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := Connect(ctx, hostEnd, log, init)
	if h != nil {
		t.Cleanup(func() { _ = h.Close() })
	}
	return h, err
}

func TestHandshakeCarriesInit(t *testing.T) {
	// A payload with newlines and handshake-like lines in it arrives whole, once, after the
	// seed and before READY.
	payload := append([]byte("CELL1 GO 1\n{\"a\":\"\n\"}"), bytes.Repeat([]byte("x"), 1<<20)...)
	var order []string
	var got [][]byte
	h, err := connectWithInit(t, payload, GuestHooks{
		Seed: func([]byte) { order = append(order, "seed") },
		Init: func(b []byte) error { order = append(order, "init"); got = append(got, b); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(got[0], payload) {
		t.Fatalf("the guest got %d inits (first %d bytes), want the %d-byte payload once", len(got), len(append(got, nil)[0]), len(payload))
	}
	if strings.Join(order, ",") != "seed,init" {
		t.Fatalf("hooks ran in the order %v, want seed then init", order)
	}
	// The session works after it.
	resp, err := h.HTTPClient().Get("http://envd/x")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d after an init", resp.StatusCode)
	}

	// No payload, no init.
	called := false
	if _, err := connectWithInit(t, nil, GuestHooks{Init: func([]byte) error { called = true; return nil }}); err != nil {
		t.Fatal(err)
	}
	if called {
		t.Fatal("Init was called for a handshake without a payload")
	}
	// An empty payload is one.
	if _, err := connectWithInit(t, []byte{}, GuestHooks{Init: func(b []byte) error { called = len(b) == 0; return nil }}); err != nil || !called {
		t.Fatalf("an empty payload: err %v, Init called %v", err, called)
	}
}

func TestHandshakeInitRefused(t *testing.T) {
	_, err := connectWithInit(t, []byte("{}"), GuestHooks{Init: func([]byte) error { return errors.New("defaultUser: user \"x\" not found") }})
	if !errors.Is(err, ErrInitRefused) || !strings.Contains(err.Error(), `defaultUser: user "x" not found`) {
		t.Fatalf("err = %v, want ErrInitRefused with the guest's reason", err)
	}
	if errors.Is(err, ErrHandshake) {
		t.Fatalf("a refused init is not a failed handshake (which is retried): %v", err)
	}
	// A guest that takes no init refuses one.
	if _, err := connectWithInit(t, []byte("{}"), GuestHooks{}); !errors.Is(err, ErrInitRefused) {
		t.Fatalf("err = %v, want ErrInitRefused", err)
	}
	// A long reason is cut to what the host reads.
	long := strings.Repeat("why ", 10000)
	if _, err := connectWithInit(t, []byte("{}"), GuestHooks{Init: func([]byte) error { return errors.New(long) }}); !errors.Is(err, ErrInitRefused) || len(err.Error()) > maxInitError+100 {
		t.Fatalf("a long refusal: %d bytes of error, %v", len(err.Error()), errors.Is(err, ErrInitRefused))
	}
	// The host sends no more than MaxInit.
	if _, err := connectWithInit(t, make([]byte, MaxInit+1), GuestHooks{Init: func([]byte) error { return nil }}); !errors.Is(err, ErrInitRefused) {
		t.Fatalf("an oversized init: err = %v", err)
	}
}

func TestInitIgnoredByAnOlderGuestFails(t *testing.T) {
	// A guest that knows no INIT (an older envd): it answers pings and GO, and skips the rest.
	hostEnd, guestEnd := socketPair(t)
	defer guestEnd.Close()
	go func() {
		lr := &lineReader{r: bufio.NewReader(guestEnd)}
		for {
			line, err := lr.next()
			if err != nil {
				return
			}
			switch verb, n, _ := parse(line); verb {
			case "PING":
				_, _ = guestEnd.Write(format("PONG", n))
			case "GO":
				_, _ = guestEnd.Write(format("READY", n))
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Connect(ctx, hostEnd, slog.New(slog.DiscardHandler), []byte(`{"envVars":{"A":"1"}}`))
	if !errors.Is(err, ErrInitRefused) || !strings.Contains(err.Error(), "neither applied nor refused") {
		t.Fatalf("err = %v, want ErrInitRefused: the init was not applied", err)
	}
}

func TestGuestRejectsOversizedInit(t *testing.T) {
	r, w := io.Pipe()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		_, err := guestHandshake(rw{r, &out}, GuestHooks{Init: func([]byte) error { return nil }})
		done <- err
	}()
	_, _ = io.WriteString(w, "CELL1 INIT "+strconv.Itoa(MaxInit+1)+"\n")
	select {
	case err := <-done:
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("err = %v, want ErrHandshake", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the guest waited for an oversized init")
	}
}
