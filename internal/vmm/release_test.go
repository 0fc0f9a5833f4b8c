package vmm

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A VM id whose released QEMU has not exited yet waits for it; other ids do not.
func TestStartWaitsForTheReleasedVMOfItsID(t *testing.T) {
	h := &Host{}
	exited := make(chan struct{})
	h.trackExit("sbx", exited)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := h.waitReleased(ctx, "sbx"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("did not wait for the exit: %v", err)
	}
	if err := h.waitReleased(context.Background(), "other"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.waitReleased(context.Background(), "sbx") }()
	close(exited)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.untrackExit("sbx", exited)
	if len(h.exiting) != 0 {
		t.Fatalf("left tracked: %v", h.exiting)
	}
}
