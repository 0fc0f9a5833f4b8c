package process

import (
	"errors"
	"os"
	"testing"
	"time"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func isClosed(f *os.File) bool {
	_, err := f.Stat()
	return errors.Is(err, os.ErrClosed)
}

// TestPipeStock: a restock makes the spare set that the next take hands out, retired files are
// closed after retireDelay, and close releases the spare and the retired at once.
func TestPipeStock(t *testing.T) {
	var s pipeStock
	first, err := s.take() // nothing in stock: made on demand
	if err != nil {
		t.Fatal(err)
	}
	s.restock()
	s.restock() // one is being made (or made): no second set
	s.wg.Wait()
	s.mu.Lock()
	spare := s.spare
	s.mu.Unlock()
	if spare == nil {
		t.Fatal("no spare after a restock")
	}
	if got, err := s.take(); err != nil || got != spare {
		t.Fatalf("take after restock: %p (%v), want the spare %p", got, err, spare)
	}
	// The write end reaches the read end, which does not block when empty.
	if _, err := first.outW.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if n, err := first.outR.Read(buf); n != 1 || err != nil {
		t.Fatalf("read %d %v", n, err)
	}

	s.retire(first.outR, first.outW, first.errR, first.errW, nil)
	if isClosed(first.outR) {
		t.Fatal("a retired file was closed at once")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !isClosed(first.outR) || !isClosed(first.errW) {
		if time.Now().After(deadline) {
			t.Fatal("retired files still open long after retireDelay")
		}
		time.Sleep(retireDelay / 5)
	}

	s.restock()
	s.wg.Wait()
	second, _ := s.take()
	s.restock()
	s.retire(second.outR, second.errR)
	s.close()
	if !isClosed(second.outR) || !isClosed(second.errR) {
		t.Fatal("close left retired files open")
	}
	if s.spare != nil {
		t.Fatal("close kept a spare set")
	}
	s.restock()
	if s.spare != nil || s.making {
		t.Fatal("a restock after close made pipes")
	}
	_ = second.outW.Close()
	_ = second.errW.Close()
	_ = spare.outR.Close()
	_ = spare.outW.Close()
	_ = spare.errR.Close()
	_ = spare.errW.Close()
}

// TestCommandsLeaveNoDescriptors: after commands end, envd holds no more descriptors than before
// them plus the one spare set of pipes.
func TestCommandsLeaveNoDescriptors(t *testing.T) {
	c, svc := newClient(t)
	run(t, c, sh("true")) // the client's connection and the first spare set
	time.Sleep(2 * retireDelay)
	before := openFDs(t)
	for range 20 {
		if o := run(t, c, sh("echo out; echo err >&2")); o.stdout.String() != "out\n" {
			t.Fatalf("stdout %q", o.stdout.String())
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := openFDs(t)
		if after <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open after 20 commands, %d before", after, before)
		}
		time.Sleep(retireDelay)
	}
	svc.pipes.mu.Lock()
	spare := svc.pipes.spare
	svc.pipes.mu.Unlock()
	if spare == nil {
		t.Fatal("no spare pipes after commands ran")
	}
}
