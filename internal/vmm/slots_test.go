package vmm

import (
	"context"
	"errors"
	"testing"
	"time"
)

// acquireWithin tries to take a slot within d.
func acquireWithin(s *slots, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.acquire(ctx)
}

// Adopted VMs take slots past the limit; each one past it is paid back before a start may go.
func TestSlotsAdoptPastTheLimit(t *testing.T) {
	s := newSlots(1)
	s.force()
	s.force()
	s.force()
	if used, over := s.inUse(); used != 3 || over != 2 {
		t.Fatalf("3 adopted with a limit of 1: used %d, over %d; want 3, 2", used, over)
	}
	for i := 3; i > 0; i-- {
		if err := acquireWithin(s, 20*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%d running, limit 1: a start got a slot (%v)", i, err)
		}
		s.release()
	}
	if err := acquireWithin(s, time.Second); err != nil {
		t.Fatalf("nothing running: %v", err)
	}
	if used, over := s.inUse(); used != 1 || over != 0 {
		t.Fatalf("used %d, over %d; want 1, 0", used, over)
	}
}

// A start waiting for a slot gets the one a VM frees; an adoption meanwhile goes past the limit
// instead of taking it.
func TestSlotsWaiterAndAdoption(t *testing.T) {
	s := newSlots(2)
	if err := acquireWithin(s, time.Second); err != nil {
		t.Fatal(err)
	}
	s.force() // within the limit
	if _, over := s.inUse(); over != 0 {
		t.Fatalf("an adoption within the limit counted past it")
	}
	got := make(chan error, 1)
	go func() { got <- acquireWithin(s, 5*time.Second) }()
	time.Sleep(20 * time.Millisecond)
	s.force() // past the limit: the waiter is not served by it
	select {
	case err := <-got:
		t.Fatalf("a start went past the limit: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	s.release() // pays the adoption past the limit back
	select {
	case err := <-got:
		t.Fatalf("a start went at the limit: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	s.release()
	if err := <-got; err != nil {
		t.Fatalf("the waiting start: %v", err)
	}
	if used, over := s.inUse(); used != 2 || over != 0 {
		t.Fatalf("used %d, over %d; want 2, 0", used, over)
	}
}
