package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/creack/pty"

	"github.com/cellhq/cell/envd/state"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// KeepAliveInterval is how often an idle event stream carries a keepalive event.
const KeepAliveInterval = 20 * time.Second

// drainGrace is how long, after a process exits, its output pipes may go without progress before
// they are closed: a background child that inherited them must not hold the result forever.
const drainGrace = 200 * time.Millisecond

// DefaultPath is the PATH commands get unless they set their own.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Service is the process service. The zero value is not usable; use New.
type Service struct {
	log      *slog.Logger
	defaults *state.Defaults
	users    *Users

	// ready, when set, is closed once commands may start (see StartAfter).
	ready <-chan struct{}
	// guard, when set, is told of every child started and waited for (see GuardChildren).
	guard ChildGuard

	// pipes keeps the next command's output pipes ready.
	pipes pipeStock

	mu    sync.Mutex
	procs map[uint32]*proc
	tags  map[string]*proc
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// New returns a Service whose commands get the user, working directory and environment in
// defaults unless a request names its own.
func New(log *slog.Logger, defaults *state.Defaults, users *Users) *Service {
	return &Service{log: log, defaults: defaults, users: users, procs: map[uint32]*proc{}, tags: map[string]*proc{}}
}

// StartAfter makes Start wait until ready is closed (in a booting guest: until its network is
// configured). Call it before serving.
func (s *Service) StartAfter(ready <-chan struct{}) { s.ready = ready }

// ChildGuard keeps a reaper of orphans (envd as PID 1) away from the service's own children,
// which the service waits for itself.
type ChildGuard interface {
	// Start runs start, which forks a child and returns its pid, and guards that child.
	Start(start func() (pid int, err error)) error
	// Release says the service has waited for pid.
	Release(pid int)
}

// GuardChildren makes the service start its children through g. Call it before serving.
func (s *Service) GuardChildren(g ChildGuard) { s.guard = g }

type subscriber struct {
	ch   chan *pb.ProcessEvent
	gone chan struct{}
}

type proc struct {
	info  *pb.ProcessInfo
	cmd   *exec.Cmd
	pid   uint32
	pgid  int
	stdin *os.File // nil when stdin is closed or was never open
	tty   *os.File // the PTY's controlling side, nil without a PTY

	mu   sync.Mutex
	subs map[*subscriber]struct{}
	end  *pb.ProcessEvent // set once the process has ended
	done chan struct{}

	lastRead time.Time

	started, exited time.Time // exited is set before the end is broadcast

	deadline *time.Timer // kills the process when its Start call's deadline passes (killAt)
	reaped   bool        // the process has been waited for: its pid is no longer its own
}

// killAt kills p's process group at t, unless p has been reaped by then. E2B's envd ends a
// command when the deadline of the call that started it passes (the SDKs' timeoutMs, which the
// Connect protocol sends as Connect-Timeout-Ms); a client that goes away ends nothing.
func (p *proc) killAt(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return
	}
	p.deadline = time.AfterFunc(time.Until(t), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.reaped {
			_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
			_ = syscall.Kill(int(p.pid), syscall.SIGKILL)
		}
	})
}

// LifetimeTrailer is the response trailer in which Start and Connect report, in microseconds,
// how long the process ran as envd measured it (from fork to reaping), so that a client can tell
// its own overhead from the command's run time.
const LifetimeTrailer = "Cell-Process-Lifetime-Us"

// lifetime returns how long p ran, once it has ended.
func (p *proc) lifetime() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited.IsZero() {
		return 0, false
	}
	return p.exited.Sub(p.started), true
}

func (p *proc) subscribe() *subscriber {
	s := &subscriber{ch: make(chan *pb.ProcessEvent, 64), gone: make(chan struct{})}
	p.mu.Lock()
	if p.end != nil {
		s.ch <- p.end
	} else {
		p.subs[s] = struct{}{}
	}
	p.mu.Unlock()
	return s
}

func (p *proc) unsubscribe(s *subscriber) {
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
	close(s.gone)
}

// broadcast hands ev to every subscriber, waiting for each that is still there: output is never
// dropped for a client that keeps reading, and a slow client slows the process (pipe backpressure).
func (p *proc) broadcast(ev *pb.ProcessEvent) {
	p.mu.Lock()
	subs := make([]*subscriber, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

func (s *Service) lookup(sel *pb.ProcessSelector) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if p, ok := s.procs[v.Pid]; ok {
			return p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", v.Pid))
	case *pb.ProcessSelector_Tag:
		if p, ok := s.tags[v.Tag]; ok {
			return p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %q not found", v.Tag))
	}
	return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process: a pid or a tag is required"))
}

func (s *Service) start(req *pb.StartRequest, userName string) (*proc, *subscriber, error) {
	cfg := req.GetProcess()
	if cfg.GetCmd() == "" {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd: must not be empty"))
	}
	if userName == "" {
		userName = s.defaults.User()
	}
	id, err := s.users.Lookup(userName)
	if err != nil {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("user %q: %w", userName, err))
	}
	// The working directory and the program are not checked before the start, which checks
	// them itself (a stat costs tens of microseconds of a command's round trip under TCG);
	// whyNotStarted tells which one a failed start tripped over.
	l := launch{cmd: cfg.GetCmd(), args: cfg.GetArgs(), dir: id.Home, home: true}
	wantCwd := s.defaults.Workdir()
	if cfg.Cwd != nil && cfg.GetCwd() != "" {
		wantCwd = cfg.GetCwd()
	}
	if wantCwd != "" {
		if l.dir, err = id.Resolve(wantCwd); err != nil {
			return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("process.cwd: %w", err))
		}
		l.home = false
	}
	env := map[string]string{
		"PATH": DefaultPath, "HOME": id.Home, "USER": id.Name, "LOGNAME": id.Name,
		"SHELL": "/bin/bash", "LANG": "C.UTF-8",
	}
	for k, v := range s.defaults.Envs() {
		env[k] = v
	}
	for k, v := range cfg.GetEnvs() {
		env[k] = v
	}
	if l.path, err = lookPath(l.cmd, env["PATH"]); err != nil {
		return nil, nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process.cmd: %w", err))
	}
	_, l.pwd = env["PWD"]
	for k, v := range env {
		l.env = append(l.env, k+"="+v)
	}
	l.attr = syscall.SysProcAttr{Setpgid: true}
	if uint32(os.Getuid()) != id.UID || uint32(os.Getgid()) != id.GID {
		l.attr.Credential = &syscall.Credential{Uid: id.UID, Gid: id.GID, Groups: id.Groups}
	}

	if req.Pty != nil {
		return s.startPTY(req, &l)
	}
	var closers []*os.File
	closeAll := func() {
		for _, f := range closers {
			_ = f.Close()
		}
	}
	pipes, err := s.pipes.take()
	if err != nil {
		return nil, nil, fmt.Errorf("output pipes: %w", err)
	}
	outR, errR := pipes.outR, pipes.errR
	closers = append(closers, pipes.all()...)
	var stdinR, stdinW *os.File
	if req.GetStdin() {
		stdinR, stdinW, err = os.Pipe()
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("stdin pipe: %w", err)
		}
		closers = append(closers, stdinR, stdinW)
	} // else: os/exec gives the child /dev/null

	p := &proc{stdin: stdinW, subs: map[*subscriber]struct{}{}, done: make(chan struct{})}
	sub := p.subscribe()
	err = s.register(req, p, &l, func(cmd *exec.Cmd) error {
		cmd.Stdout, cmd.Stderr = pipes.outW, pipes.errW
		if stdinR != nil {
			cmd.Stdin = stdinR
		}
		return cmd.Start()
	})
	if err != nil {
		closeAll()
		return nil, nil, err
	}

	// The next command's pipes are made while this one runs.
	s.pipes.restock()
	// The child has its copies; ours would keep the pipes open forever.
	_ = pipes.outW.Close()
	_ = pipes.errW.Close()
	if stdinR != nil {
		_ = stdinR.Close()
	}
	go s.supervise(p, outR, errR)
	return p, sub, nil
}

// launch is how a command is to be started.
type launch struct {
	cmd  string // as requested: the program's argv[0]
	path string // the program found for it
	args []string
	env  []string
	pwd  bool // env sets PWD; else PWD follows dir
	dir  string
	// home says dir is the user's home rather than a directory the request named: a user
	// whose home is missing starts at the root, as login does.
	home bool
	attr syscall.SysProcAttr
}

func (l *launch) command() *exec.Cmd {
	cmd := exec.Command(l.path, l.args...)
	cmd.Args[0] = l.cmd
	cmd.Dir = l.dir
	cmd.Env = l.env
	if !l.pwd {
		cmd.Env = append(l.env[:len(l.env):len(l.env)], "PWD="+l.dir)
	}
	attr := l.attr
	cmd.SysProcAttr = &attr
	return cmd
}

// whyNotStarted turns a failed start into the error the client sees, telling a missing
// working directory or program from other failures.
func whyNotStarted(l *launch, err error) error {
	if !isDir(l.dir) {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("process.cwd: %q is not a directory", l.dir))
	}
	if _, serr := os.Stat(l.path); serr != nil {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process.cmd: %s: %w", l.cmd, serr))
	}
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("starting %s: %w", l.cmd, err))
}

func isDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// register starts the process (start gets the command to start, made from l) and records it,
// under the lock that keeps tags unique. A start that fails because the user's home is missing
// is retried at the root.
func (s *Service) register(req *pb.StartRequest, p *proc, l *launch, start func(*exec.Cmd) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Tag != nil {
		if _, taken := s.tags[req.GetTag()]; taken {
			return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("tag: %q is used by a running process", req.GetTag()))
		}
	}
	if s.guard != nil {
		unguarded := start
		start = func(cmd *exec.Cmd) error {
			return s.guard.Start(func() (int, error) {
				if err := unguarded(cmd); err != nil {
					return 0, err
				}
				return cmd.Process.Pid, nil
			})
		}
	}
	p.started = time.Now()
	p.cmd = l.command()
	if err := start(p.cmd); err != nil {
		if !l.home || isDir(l.dir) {
			return whyNotStarted(l, err)
		}
		l.dir = "/"
		p.started = time.Now()
		p.cmd = l.command()
		if err := start(p.cmd); err != nil {
			return whyNotStarted(l, err)
		}
	}
	p.pid = uint32(p.cmd.Process.Pid)
	p.pgid = p.cmd.Process.Pid
	p.info = &pb.ProcessInfo{Config: req.GetProcess(), Pid: p.pid, Tag: req.Tag}
	s.procs[p.pid] = p
	if req.Tag != nil {
		s.tags[req.GetTag()] = p
	}
	return nil
}

// startPTY runs the command on a new pseudo-terminal whose output is reported as pty data.
func (s *Service) startPTY(req *pb.StartRequest, l *launch) (*proc, *subscriber, error) {
	size := req.GetPty().GetSize()
	ws := &pty.Winsize{Cols: uint16(min(max(size.GetCols(), 1), 65535)), Rows: uint16(min(max(size.GetRows(), 1), 65535))}
	// The leader of a new session whose controlling terminal is the PTY (job control works).
	l.attr.Setpgid = false
	l.attr.Setsid = true
	l.attr.Setctty = true
	p := &proc{subs: map[*subscriber]struct{}{}, done: make(chan struct{})}
	sub := p.subscribe()
	var tty *os.File
	err := s.register(req, p, l, func(cmd *exec.Cmd) error {
		var err error
		tty, err = pty.StartWithAttrs(cmd, ws, cmd.SysProcAttr)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	p.tty = tty
	go s.supervise(p, tty, nil)
	return p, sub, nil
}

// lookPath finds cmd in the given PATH (not envd's own), as a shell would.
func lookPath(cmd, path string) (string, error) {
	if filepath.Base(cmd) != cmd || cmd == "." || cmd == ".." {
		return cmd, nil // a path: the start finds out whether it is there
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, cmd)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: executable file not found in $PATH", cmd)
}

// supervise streams the process's output, waits for it, and publishes its end.
func (s *Service) supervise(p *proc, outR, errR *os.File) {
	var readers sync.WaitGroup
	var progressMu sync.Mutex
	p.lastRead = time.Now()
	pump := func(r *os.File, mk func([]byte) *pb.ProcessEvent_DataEvent) {
		defer readers.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				progressMu.Lock()
				p.lastRead = time.Now()
				progressMu.Unlock()
				data := make([]byte, n)
				copy(data, buf[:n])
				p.broadcast(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: mk(data)}})
				progressMu.Lock()
				p.lastRead = time.Now()
				progressMu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}
	closePipes := func() {
		_ = outR.Close()
		if errR != nil {
			_ = errR.Close()
		}
	}
	if p.tty != nil {
		readers.Add(1)
		go pump(outR, func(b []byte) *pb.ProcessEvent_DataEvent {
			return &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: b}}
		})
	} else {
		readers.Add(2)
		go pump(outR, func(b []byte) *pb.ProcessEvent_DataEvent {
			return &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: b}}
		})
		go pump(errR, func(b []byte) *pb.ProcessEvent_DataEvent {
			return &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: b}}
		})
	}
	readersDone := make(chan struct{})
	go func() { readers.Wait(); close(readersDone) }()

	waitErr := p.cmd.Wait()
	exited := time.Now()
	if s.guard != nil {
		s.guard.Release(p.cmd.Process.Pid)
	}
	p.mu.Lock()
	p.reaped = true
	if p.deadline != nil {
		p.deadline.Stop()
	}
	p.mu.Unlock()

	// Drain what the process wrote; give up on pipes held open by its children once they stall.
	tick := time.NewTicker(drainGrace / 4)
	stalled := false
drain:
	for {
		select {
		case <-readersDone:
			break drain
		case <-tick.C:
			progressMu.Lock()
			stalled = time.Since(p.lastRead) > drainGrace
			progressMu.Unlock()
			if stalled {
				closePipes()
				<-readersDone
				break drain
			}
		}
	}
	tick.Stop()
	if stalled {
		closePipes()
	} else {
		s.pipes.retire(outR, errR) // at end of file: closing them can wait
	}

	end := endEvent(p.cmd.ProcessState, waitErr)
	s.mu.Lock()
	delete(s.procs, p.pid)
	if p.info.Tag != nil && s.tags[p.info.GetTag()] == p {
		delete(s.tags, p.info.GetTag())
	}
	s.mu.Unlock()
	p.mu.Lock()
	if p.stdin != nil {
		_ = p.stdin.Close()
		p.stdin = nil
	}
	p.tty = nil // closed with outR
	p.mu.Unlock()
	ev := &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
	// The run time is known before anyone hears of the end: a stream ends (and reports it) as
	// soon as it has sent the end event.
	p.mu.Lock()
	p.exited = exited
	p.mu.Unlock()
	p.broadcast(ev)
	p.mu.Lock()
	p.end = ev
	p.subs = nil
	p.mu.Unlock()
	close(p.done)
}

func endEvent(st *os.ProcessState, waitErr error) *pb.ProcessEvent_EndEvent {
	end := &pb.ProcessEvent_EndEvent{}
	if st == nil {
		msg := "wait failed"
		if waitErr != nil {
			msg = waitErr.Error()
		}
		end.ExitCode = -1
		end.Status = "error"
		end.Error = &msg
		return end
	}
	end.Status = st.String()
	end.Exited = st.Exited()
	if !st.Success() {
		// As E2B's envd reports it ("exit status 3", "signal: killed"): the SDKs show it as
		// the message of their command-exit error.
		msg := end.Status
		end.Error = &msg
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		end.ExitCode = int32(128 + int(ws.Signal()))
	} else {
		end.ExitCode = int32(st.ExitCode())
	}
	return end
}

// stream relays a subscriber's events to send until the process ends or ctx is done. The process
// keeps running when the client goes away.
func stream(ctx context.Context, p *proc, sub *subscriber, keepalive time.Duration, send func(*pb.ProcessEvent) error) error {
	defer p.unsubscribe(sub)
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	ka := time.NewTicker(keepalive)
	defer ka.Stop()
	for {
		select {
		case ev := <-sub.ch:
			_, last := ev.Event.(*pb.ProcessEvent_End)
			if last {
				holdFlushes(ctx) // the end event leaves with the end of the stream
			}
			if err := send(ev); err != nil {
				return err
			}
			if last {
				return nil
			}
		case <-ka.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Start runs a command and streams its events.
func (s *Service) Start(ctx context.Context, req *connect.Request[pb.StartRequest], out *connect.ServerStream[pb.StartResponse]) error {
	if s.ready != nil {
		select {
		case <-s.ready:
		case <-ctx.Done():
			return connect.NewError(connect.CodeCanceled, fmt.Errorf("waiting for the guest's network: %w", ctx.Err()))
		}
	}
	p, sub, err := s.start(req.Msg, UserFromHeader(req.Header()))
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		p.killAt(dl)
	}
	err = stream(ctx, p, sub, KeepAlive(req.Header()), func(ev *pb.ProcessEvent) error { return out.Send(&pb.StartResponse{Event: ev}) })
	setLifetime(p, out.ResponseTrailer())
	return err
}

func setLifetime(p *proc, trailer http.Header) {
	if d, ok := p.lifetime(); ok {
		trailer.Set(LifetimeTrailer, strconv.FormatInt(d.Microseconds(), 10))
	}
}

// Connect re-attaches to a running process's events.
func (s *Service) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], out *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	sub := p.subscribe()
	err = stream(ctx, p, sub, KeepAlive(req.Header()), func(ev *pb.ProcessEvent) error { return out.Send(&pb.ConnectResponse{Event: ev}) })
	setLifetime(p, out.ResponseTrailer())
	return err
}

// List returns the running processes.
func (s *Service) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := &pb.ListResponse{}
	for _, p := range s.procs {
		res.Processes = append(res.Processes, p.info)
	}
	return connect.NewResponse(res), nil
}

// Update resizes a process's PTY.
func (s *Service) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty == nil {
		return connect.NewResponse(&pb.UpdateResponse{}), nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: has no pty", p.pid))
	}
	size := req.Msg.GetPty().GetSize()
	ws := &pty.Winsize{Cols: uint16(min(max(size.GetCols(), 1), 65535)), Rows: uint16(min(max(size.GetRows(), 1), 65535))}
	if err := pty.Setsize(p.tty, ws); err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("process %d: resizing pty: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

func (s *Service) writeInput(p *proc, in *pb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		p.mu.Lock()
		w := p.stdin
		p.mu.Unlock()
		if w == nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: stdin is not open", p.pid))
		}
		if _, err := w.Write(v.Stdin); err != nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: writing stdin: %w", p.pid, err))
		}
		return nil
	case *pb.ProcessInput_Pty:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.tty == nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: has no pty", p.pid))
		}
		if _, err := p.tty.Write(v.Pty); err != nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d: writing pty: %w", p.pid, err))
		}
		return nil
	}
	return connect.NewError(connect.CodeInvalidArgument, errors.New("input: stdin or pty data is required"))
}

// SendInput writes to a process's stdin.
func (s *Service) SendInput(_ context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := s.writeInput(p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput writes a stream of input, in order, to one process.
func (s *Service) StreamInput(_ context.Context, in *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *proc
	for in.Receive() {
		switch ev := in.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			found, err := s.lookup(ev.Start.GetProcess())
			if err != nil {
				return nil, err
			}
			p = found
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("stream input: the start event must come first"))
			}
			if err := s.writeInput(p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		}
	}
	if err := in.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// CloseStdin closes a process's stdin so that it reads EOF.
func (s *Service) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.stdin != nil {
		_ = p.stdin.Close()
		p.stdin = nil
	}
	p.mu.Unlock()
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

// SendSignal signals a process's whole process group.
func (s *Service) SendSignal(_ context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	sig := syscall.Signal(req.Msg.GetSignal())
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGHUP, pb.Signal_SIGNAL_SIGINT, pb.Signal_SIGNAL_SIGQUIT, pb.Signal_SIGNAL_SIGKILL, pb.Signal_SIGNAL_SIGTERM:
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal: %v is not supported", req.Msg.GetSignal()))
	}
	if err := syscall.Kill(-p.pgid, sig); err != nil {
		if err := syscall.Kill(int(p.pid), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("signalling %d: %w", p.pid, err))
		}
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// Close kills every process the service still runs and waits for them to end.
func (s *Service) Close() {
	s.mu.Lock()
	procs := make([]*proc, 0, len(s.procs))
	for _, p := range s.procs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
		_ = syscall.Kill(int(p.pid), syscall.SIGKILL)
	}
	for _, p := range procs {
		<-p.done
	}
	s.pipes.close()
}
