package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/cellhq/cell/internal/channel"
)

// A VM's channel to envd is one session at a time, made again when it is gone: an adopted VM's
// first session is made in the background (a restarted daemon must not wait for, nor give up on,
// a guest that is slow to answer), and so is the next one after a failed pause, which closed it
// so that the saved guest would find its host gone.

// SessionTimeout bounds one attempt at a new session: QEMU's socket, then envd's handshake.
const SessionTimeout = 10 * time.Second

// Errors of VM.Session.
var (
	ErrChannelSuspended = errors.New("the channel to envd is suspended (the VM is being saved)")
	errVMClosed         = errors.New("the VM is closed")
)

// sessions holds a VM's channel session and the attempt at a new one.
type sessions struct {
	mu        sync.Mutex
	cur       *channel.Host
	attempt   *attempt // in flight, or nil
	suspended bool
	closed    bool
}

// attempt is one try at a new session, shared by everyone who waits for it.
type attempt struct {
	done   chan struct{}
	cancel context.CancelFunc
	h      *channel.Host
	err    error
}

func alive(h *channel.Host) bool {
	select {
	case <-h.Done():
		return false
	default:
		return true
	}
}

// Session returns the VM's session with envd, making a new one when there is none (or it ended):
// one attempt at a time, which every caller waits for; ctx bounds this caller's wait. It fails
// at once while the channel is suspended or once the VM is closed or its QEMU has exited.
func (vm *VM) Session(ctx context.Context) (*channel.Host, error) {
	a, h, err := vm.sessionOrAttempt()
	if a == nil {
		return h, err
	}
	select {
	case <-a.done:
		return a.h, a.err
	case <-ctx.Done():
		return nil, fmt.Errorf("vm %s: waiting for envd: %w", vm.ID, context.Cause(ctx))
	}
}

// connectSoon starts an attempt at a new session in the background if the VM has none, and
// returns at once.
func (vm *VM) connectSoon() { _, _, _ = vm.sessionOrAttempt() }

// sessionOrAttempt returns the live session, or the attempt to wait for (started if need be).
func (vm *VM) sessionOrAttempt() (*attempt, *channel.Host, error) {
	s := &vm.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, nil, fmt.Errorf("vm %s: %w", vm.ID, errVMClosed)
	case s.suspended:
		return nil, nil, fmt.Errorf("vm %s: %w", vm.ID, ErrChannelSuspended)
	case s.cur != nil && alive(s.cur):
		return nil, s.cur, nil
	}
	select {
	case <-vm.exited:
		return nil, nil, fmt.Errorf("vm %s: %w: %s", vm.ID, ErrQEMUExited, describeExit(vm.exitErr))
	default:
	}
	if s.attempt == nil {
		ctx, cancel := context.WithTimeout(context.Background(), SessionTimeout)
		a := &attempt{done: make(chan struct{}), cancel: cancel}
		s.attempt = a
		vm.sessWG.Add(1)
		go vm.connect(ctx, a)
	}
	return s.attempt, nil, nil
}

// connect makes a new session for a (its ctx bounds it; the VM's exit ends it too).
func (vm *VM) connect(ctx context.Context, a *attempt) {
	defer vm.sessWG.Done()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-vm.exited:
			a.cancel()
		case <-ctx.Done():
		}
	}()
	defer func() { a.cancel(); <-watched }()
	var h *channel.Host
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", vm.dir.File("ch.sock"))
	if err == nil {
		// Connect owns conn from here, and closes it on failure.
		h, err = channel.Connect(ctx, conn, vm.log, nil)
	}
	if err != nil {
		err = fmt.Errorf("vm %s: envd did not answer: %w", vm.ID, err)
	}
	s := &vm.sess
	s.mu.Lock()
	s.attempt = nil
	switch {
	case err != nil:
	case s.closed:
		err = fmt.Errorf("vm %s: %w", vm.ID, errVMClosed)
	case s.suspended:
		err = fmt.Errorf("vm %s: %w", vm.ID, ErrChannelSuspended)
	}
	var old *channel.Host
	if err == nil {
		old, s.cur = s.cur, h
	}
	s.mu.Unlock()
	if err != nil && h != nil {
		_ = h.Close()
		h = nil
	}
	if old != nil {
		_ = old.Close()
	}
	if err == nil {
		vm.log.Debug("new session with envd")
	}
	a.h, a.err = h, err
	close(a.done)
}

// SuspendChannel closes the session with envd and makes no new one until ResumeChannel: the
// guest is about to be saved, and should find its host gone when it is restored (an attempt in
// flight is cancelled and waited for).
func (vm *VM) SuspendChannel() {
	s := &vm.sess
	s.mu.Lock()
	s.suspended = true
	h, a := s.cur, s.attempt
	s.cur = nil
	s.mu.Unlock()
	vm.endSession(h, a)
}

// ResumeChannel lets sessions be made again after SuspendChannel (the save failed and the VM
// runs on), and starts making one.
func (vm *VM) ResumeChannel() {
	s := &vm.sess
	s.mu.Lock()
	s.suspended = false
	s.mu.Unlock()
	vm.connectSoon()
}

// closeSessions ends the session for good (the VM is closed or let go of).
func (vm *VM) closeSessions() {
	s := &vm.sess
	s.mu.Lock()
	s.closed = true
	h, a := s.cur, s.attempt
	s.cur = nil
	s.mu.Unlock()
	vm.endSession(h, a)
	vm.sessWG.Wait()
}

func (vm *VM) endSession(h *channel.Host, a *attempt) {
	if h != nil {
		_ = h.Close()
	}
	if a != nil {
		a.cancel()
		<-a.done
	}
}
