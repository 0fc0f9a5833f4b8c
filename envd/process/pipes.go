package process

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Making a command's output pipes and, after it ends, closing their read ends costs about a
// fifth of a millisecond of emulated kernel and runtime work under TCG: two pipes, their
// registration with the runtime's poller and its undoing. pipeStock moves that work off a
// command's round trip: the next command's pipes are made while this one runs, and the read ends
// of a finished command are closed a little after its end has been sent.

// retireDelay is how long the read ends of a finished command's pipes stay open (at end of file,
// so nothing can be waiting on them).
const retireDelay = 25 * time.Millisecond

// outputPipes are a command's stdout and stderr pipes: the read ends are envd's (non-blocking,
// polled by the runtime), the write ends the child's (blocking, handed over as they are).
type outputPipes struct{ outR, outW, errR, errW *os.File }

func newOutputPipes() (*outputPipes, error) {
	var files []*os.File
	for range 2 {
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("pipe2: %w", err)
		}
		if err := unix.SetNonblock(fds[0], true); err != nil {
			_ = unix.Close(fds[0])
			_ = unix.Close(fds[1])
			closeFiles(files)
			return nil, fmt.Errorf("pipe: making the read end non-blocking: %w", err)
		}
		files = append(files, os.NewFile(uintptr(fds[0]), "|0"), os.NewFile(uintptr(fds[1]), "|1"))
	}
	return &outputPipes{outR: files[0], outW: files[1], errR: files[2], errW: files[3]}, nil
}

// all returns the four ends.
func (p *outputPipes) all() []*os.File { return []*os.File{p.outR, p.outW, p.errR, p.errW} }

func closeFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			_ = f.Close()
		}
	}
}

// pipeStock keeps one set of output pipes ready and retires used read ends. The zero value is
// ready to use; close releases what it holds.
type pipeStock struct {
	mu      sync.Mutex
	spare   *outputPipes
	making  bool
	retired []*os.File
	timer   *time.Timer // closes retired; nil when nothing is retired
	closed  bool
	wg      sync.WaitGroup // a restock in flight
}

// take returns the spare set, or makes one.
func (s *pipeStock) take() (*outputPipes, error) {
	s.mu.Lock()
	p := s.spare
	s.spare = nil
	s.mu.Unlock()
	if p != nil {
		return p, nil
	}
	return newOutputPipes()
}

// restock makes a spare set in the background unless there is one (or one is being made).
func (s *pipeStock) restock() {
	s.mu.Lock()
	if s.spare != nil || s.making || s.closed {
		s.mu.Unlock()
		return
	}
	s.making = true
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		p, err := newOutputPipes()
		s.mu.Lock()
		s.making = false
		if err == nil && s.spare == nil && !s.closed {
			s.spare, p = p, nil
		}
		s.mu.Unlock()
		if p != nil {
			closeFiles(p.all())
		}
	}()
}

// retire closes files after retireDelay.
func (s *pipeStock) retire(files ...*os.File) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closeFiles(files)
		return
	}
	s.retired = append(s.retired, files...)
	if s.timer == nil {
		s.timer = time.AfterFunc(retireDelay, s.closeRetired)
	}
	s.mu.Unlock()
}

func (s *pipeStock) closeRetired() {
	s.mu.Lock()
	files := s.retired
	s.retired, s.timer = nil, nil
	s.mu.Unlock()
	closeFiles(files)
}

// close releases the spare set and the retired files at once; later restocks do nothing and
// later retirements close at once.
func (s *pipeStock) close() {
	s.mu.Lock()
	s.closed = true
	files := s.retired
	s.retired = nil
	if s.timer != nil && s.timer.Stop() {
		s.timer = nil
	}
	if p := s.spare; p != nil {
		files = append(files, p.all()...)
		s.spare = nil
	}
	s.mu.Unlock()
	closeFiles(files)
	s.wg.Wait()
}
