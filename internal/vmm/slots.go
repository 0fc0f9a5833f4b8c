package vmm

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// slots counts the VMs a Host runs against its limit (Config.MaxVMs). A VM started here waits
// for a free slot; a VM adopted after a restart takes one even past the limit (a daemon restarted
// with a lower --max-vms must not destroy healthy sandboxes because of it), and every slot taken
// past the limit is paid back by the next release, so that new VMs start only once the count is
// below the limit again.
type slots struct {
	sem *semaphore.Weighted // FIFO for waiting starts

	mu   sync.Mutex // orders over against the semaphore's count
	max  int
	used int // slots held, over included (for reporting)
	over int // slots held past the limit
}

func newSlots(max int) *slots {
	return &slots{sem: semaphore.NewWeighted(int64(max)), max: max}
}

// acquire waits until a slot is free (ctx bounds the wait).
func (s *slots) acquire(ctx context.Context) error {
	if err := s.sem.Acquire(ctx, 1); err != nil {
		return err
	}
	s.mu.Lock()
	s.used++
	s.mu.Unlock()
	return nil
}

// force takes a slot at once, past the limit if none is free.
func (s *slots) force() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.sem.TryAcquire(1) {
		s.over++
	}
	s.used++
}

// release gives a slot back: first to pay back one taken past the limit, else to the waiters.
func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used--
	if s.over > 0 {
		s.over--
		return
	}
	// Under mu: a force racing with this release must see the freed slot, not count past it.
	s.sem.Release(1)
}

// inUse is how many slots are held, and how many of them past the limit.
func (s *slots) inUse() (used, over int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.over
}
