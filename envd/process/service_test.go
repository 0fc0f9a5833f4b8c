package process

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"github.com/cellhq/cell/envd/state"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func currentUser(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func newClient(t *testing.T) (processconnect.ProcessClient, *Service) {
	t.Helper()
	svc := New(slog.New(slog.DiscardHandler), state.New(currentUser(t)), &Users{})
	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(svc))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		svc.Close()
		srv.CloseClientConnections()
		srv.Close()
	})
	return processconnect.NewProcessClient(srv.Client(), srv.URL), svc
}

type outcome struct {
	pid            uint32
	stdout, stderr bytes.Buffer
	pty            bytes.Buffer
	order          []string // "o" and "e" per data event
	end            *pb.ProcessEvent_EndEvent
}

func collect(t *testing.T, recv func() bool, msg func() *pb.ProcessEvent, errf func() error) *outcome {
	t.Helper()
	o := &outcome{}
	for recv() {
		switch ev := msg().GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			o.pid = ev.Start.GetPid()
		case *pb.ProcessEvent_Data:
			if b := ev.Data.GetStdout(); b != nil {
				o.stdout.Write(b)
				o.order = append(o.order, "o")
			}
			if b := ev.Data.GetStderr(); b != nil {
				o.stderr.Write(b)
				o.order = append(o.order, "e")
			}
			if b := ev.Data.GetPty(); b != nil {
				o.pty.Write(b)
			}
		case *pb.ProcessEvent_End:
			o.end = ev.End
		}
	}
	if err := errf(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if o.end == nil {
		t.Fatal("stream ended without an end event")
	}
	return o
}

func run(t *testing.T, c processconnect.ProcessClient, req *pb.StartRequest) *outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return collect(t, s.Receive, func() *pb.ProcessEvent { return s.Msg().GetEvent() }, s.Err)
}

func sh(script string) *pb.StartRequest {
	return &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}
}

func TestStdoutStderrExit(t *testing.T) {
	c, _ := newClient(t)
	o := run(t, c, sh("echo out; echo err >&2; exit 7"))
	if o.stdout.String() != "out\n" || o.stderr.String() != "err\n" {
		t.Fatalf("stdout %q stderr %q", o.stdout.String(), o.stderr.String())
	}
	if o.end.GetExitCode() != 7 || !o.end.GetExited() || o.pid == 0 || o.end.GetError() != "exit status 7" {
		t.Fatalf("end %+v pid %d", o.end, o.pid)
	}
	// A command that succeeded has no error.
	if o := run(t, c, sh("true")); o.end.Error != nil || o.end.GetStatus() != "exit status 0" {
		t.Fatalf("end of true: %+v", o.end)
	}
}

func TestSignalExitCode(t *testing.T) {
	c, _ := newClient(t)
	o := run(t, c, sh("kill -9 $$"))
	if o.end.GetExitCode() != 128+9 || o.end.GetExited() || o.end.GetStatus() != "signal: killed" || o.end.GetError() != "signal: killed" {
		t.Fatalf("end %+v", o.end)
	}
}

func TestLargeOutputComplete(t *testing.T) {
	c, _ := newClient(t)
	o := run(t, c, sh("head -c 20000000 /dev/zero | tr '\\0' 'x'; echo done >&2"))
	want := sha256.Sum256(bytes.Repeat([]byte("x"), 20000000))
	if sha256.Sum256(o.stdout.Bytes()) != want || o.stderr.String() != "done\n" {
		t.Fatalf("got %d bytes stdout, stderr %q", o.stdout.Len(), o.stderr.String())
	}
}

func TestEnvCwdUser(t *testing.T) {
	c, _ := newClient(t)
	dir := t.TempDir()
	req := sh(`echo "$GREETING|$(pwd)|$(id -un)|$HOME"`)
	req.Process.Envs = map[string]string{"GREETING": "hi"}
	req.Process.Cwd = &dir
	o := run(t, c, req)
	me := currentUser(t)
	u, _ := user.Current()
	if want := fmt.Sprintf("hi|%s|%s|%s\n", dir, me, u.HomeDir); o.stdout.String() != want {
		t.Fatalf("got %q want %q", o.stdout.String(), want)
	}
	if os.Getuid() != 0 {
		return
	}
	// As root, run as another user through the Basic auth header, as E2B's SDKs do.
	ctx := context.Background()
	r := connect.NewRequest(sh("id -u; echo $HOME"))
	r.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("nobody:")))
	s, err := c.Start(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	o = collect(t, s.Receive, func() *pb.ProcessEvent { return s.Msg().GetEvent() }, s.Err)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	if want := nobody.Uid + "\n" + nobody.HomeDir + "\n"; o.stdout.String() != want {
		t.Fatalf("as nobody: got %q want %q", o.stdout.String(), want)
	}
}

func TestStdinAndCloseStdin(t *testing.T) {
	c, _ := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	yes := true
	req := sh("wc -c; echo got-eof")
	req.Stdin = &yes
	s, err := c.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
		t.Fatal("no start event")
	}
	pid := s.Msg().GetEvent().GetStart().GetPid()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	for i := 0; i < 3; i++ {
		if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel,
			Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("abcd")}}})); err != nil {
			t.Fatal(err)
		}
	}
	// StreamInput keeps order too.
	st := c.StreamInput(ctx)
	_ = st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}})
	_ = st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{
		Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("xyz")}}}}})
	if _, err := st.CloseAndReceive(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
		t.Fatal(err)
	}
	o := collect(t, s.Receive, func() *pb.ProcessEvent { return s.Msg().GetEvent() }, s.Err)
	if strings.TrimSpace(o.stdout.String()) != "15\ngot-eof" {
		t.Fatalf("stdout %q", o.stdout.String())
	}
}

func TestConnectByTagListAndSignal(t *testing.T) {
	c, _ := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tag := "sleeper"
	req := sh("echo started; exec sleep 1000")
	req.Tag = &tag
	s, err := c.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	for s.Receive() {
		if d := s.Msg().GetEvent().GetData(); d != nil && string(d.GetStdout()) == "started\n" {
			break
		}
	}
	_ = s.Close() // the client leaves; the process keeps running

	list, err := c.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil || len(list.Msg.GetProcesses()) != 1 || list.Msg.GetProcesses()[0].GetTag() != tag {
		t.Fatalf("list = %v, %v", list, err)
	}
	// A second process cannot take the tag.
	s2, err := c.Start(ctx, connect.NewRequest(req))
	if err == nil {
		s2.Receive()
		err = s2.Err()
	}
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("duplicate tag: %v", err)
	}
	cs, err := c.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}}))
	if err != nil {
		t.Fatal(err)
	}
	if !cs.Receive() || cs.Msg().GetEvent().GetStart() == nil {
		t.Fatal("connect: no start event")
	}
	pid := cs.Msg().GetEvent().GetStart().GetPid()
	if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGTERM})); err != nil {
		t.Fatal(err)
	}
	o := collect(t, cs.Receive, func() *pb.ProcessEvent { return cs.Msg().GetEvent() }, cs.Err)
	if o.end.GetExitCode() != 128+15 {
		t.Fatalf("end %+v", o.end)
	}
	if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGKILL})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("signal to ended process: %v", err)
	}
}

// TestStartDeadlineEndsTheCommand: the deadline of the Start call (the E2B SDKs' timeoutMs) ends
// the command and its process group, as E2B's envd does; the process is gone from List.
func TestStartDeadlineEndsTheCommand(t *testing.T) {
	c, _ := newClient(t)
	// Long enough for the command to start and say its child's pid on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.Start(ctx, connect.NewRequest(sh("sleep 1000 & echo $!; wait")))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	child := 0
	for s.Receive() {
		if d := s.Msg().GetEvent().GetData(); d != nil && child == 0 {
			child, _ = strconv.Atoi(strings.TrimSpace(string(d.GetStdout())))
		}
	}
	if connect.CodeOf(s.Err()) != connect.CodeDeadlineExceeded || child == 0 {
		t.Fatalf("stream: %v, child %d", s.Err(), child)
	}
	for i := 0; ; i++ {
		list, err := c.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Msg.GetProcesses()) == 0 && errors.Is(syscall.Kill(child, 0), syscall.ESRCH) {
			return
		}
		if i == 100 {
			t.Fatalf("after the deadline: processes %v, child %d still there", list.Msg.GetProcesses(), child)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBackgroundChildHoldingOutputDoesNotHang(t *testing.T) {
	c, _ := newClient(t)
	start := time.Now()
	o := run(t, c, sh("sleep 30 & echo parent-done"))
	if o.stdout.String() != "parent-done\n" || o.end.GetExitCode() != 0 {
		t.Fatalf("got %q %+v", o.stdout.String(), o.end)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v: a background child held the result", d)
	}
}

func TestBadRequests(t *testing.T) {
	c, _ := newClient(t)
	ctx := context.Background()
	missing, file, otherHome := "/nonexistent/dir", "/etc/passwd", "~root/x"
	cases := map[string]struct {
		req  *pb.StartRequest
		code connect.Code
		word string
	}{
		"empty cmd": {&pb.StartRequest{Process: &pb.ProcessConfig{}}, connect.CodeInvalidArgument, "process.cmd"},
		"not found": {&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "no-such-command-xyz"}}, connect.CodeNotFound, "not found"},
		"bad cwd":   {&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: &missing}}, connect.CodeInvalidArgument, "cwd"},
		"cwd file":  {&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: &file}}, connect.CodeInvalidArgument, "cwd"},
		"no path":   {&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/no/such/program"}}, connect.CodeNotFound, "process.cmd: /no/such/program"},
		"not exec":  {&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/etc/passwd"}}, connect.CodeInvalidArgument, "starting /etc/passwd"},
		"~name cwd": {&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: &otherHome}}, connect.CodeInvalidArgument, "process.cwd"},
	}
	for name, tc := range cases {
		s, err := c.Start(ctx, connect.NewRequest(tc.req))
		if err == nil {
			for s.Receive() {
			}
			err = s.Err()
		}
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.word) {
			t.Errorf("%s: err = %v, want %v naming %q", name, err, tc.code, tc.word)
		}
	}
	r := connect.NewRequest(sh("true"))
	r.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("no-such-user-xyz:")))
	s, err := c.Start(ctx, r)
	if err == nil {
		for s.Receive() {
		}
		err = s.Err()
	}
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "user") {
		t.Errorf("unknown user: %v", err)
	}
	_, err = c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: 999999}}}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown pid: %v", err)
	}
}

func TestUserFromHeader(t *testing.T) {
	h := http.Header{}
	if UserFromHeader(h) != "" {
		t.Fatal("no header should give no user")
	}
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("root:")))
	if UserFromHeader(h) != "root" {
		t.Fatal("want root")
	}
	h.Set("Authorization", "Basic !!!")
	if UserFromHeader(h) != "" {
		t.Fatal("garbage should give no user")
	}
}

// TestStartAfter checks that commands wait for the gate (a booting guest's network): a start
// before it gives up with its context, one waiting for it runs once it opens.
func TestStartAfter(t *testing.T) {
	ready := make(chan struct{})
	svc := New(slog.New(slog.DiscardHandler), state.New(currentUser(t)), &Users{})
	svc.StartAfter(ready)
	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(svc))
	srv := httptest.NewServer(mux)
	defer func() {
		svc.Close()
		srv.CloseClientConnections()
		srv.Close()
	}()
	c := processconnect.NewProcessClient(srv.Client(), srv.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	s, err := c.Start(ctx, connect.NewRequest(sh("echo ran")))
	if err == nil {
		for s.Receive() {
			if s.Msg().GetEvent().GetStart() != nil {
				t.Error("a command started before the gate opened")
			}
		}
		err = s.Err()
		_ = s.Close()
	}
	cancel()
	if code := connect.CodeOf(err); code != connect.CodeCanceled && code != connect.CodeDeadlineExceeded {
		t.Fatalf("a start that timed out waiting: %v", err)
	}

	const wait = 100 * time.Millisecond
	t0 := time.Now()
	go func() {
		time.Sleep(wait)
		close(ready)
	}()
	o := run(t, c, sh("echo ran"))
	if took := time.Since(t0); took < wait {
		t.Fatalf("the command ended %v after the start, before the gate opened (%v)", took, wait)
	}
	if o.stdout.String() != "ran\n" || o.end.GetExitCode() != 0 {
		t.Fatalf("stdout %q end %+v", o.stdout.String(), o.end)
	}
}

// TestWorkingDirectory: a command starts in the directory it names (PWD says so) or in the
// user's home; a user whose home is missing starts at the root, as login does.
func TestWorkingDirectory(t *testing.T) {
	c, svc := newClient(t)
	dir := t.TempDir()
	req := sh(`pwd; echo "$PWD"`)
	req.Process.Cwd = &dir
	if o := run(t, c, req); o.stdout.String() != dir+"\n"+dir+"\n" {
		t.Fatalf("with cwd %s: %q", dir, o.stdout.String())
	}
	me := currentUser(t)
	id, err := svc.users.Lookup(me)
	if err != nil {
		t.Fatal(err)
	}
	if o := run(t, c, sh(`pwd; echo "$PWD"`)); o.stdout.String() != id.Home+"\n"+id.Home+"\n" {
		t.Fatalf("in the home %s: %q", id.Home, o.stdout.String())
	}
	// "~" and "~/…" are the user's home (here made a temporary directory), as E2B's envd
	// expands them.
	home := id
	home.Home = dir
	svc.users.mu.Lock()
	svc.users.cache[me] = home
	svc.users.mu.Unlock()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for cwd, want := range map[string]string{"~": dir, "~/sub": filepath.Join(dir, "sub")} {
		r := sh(`pwd`)
		r.Process.Cwd = &cwd
		if o := run(t, c, r); o.stdout.String() != want+"\n" {
			t.Fatalf("cwd %q: %q, want %s", cwd, o.stdout.String(), want)
		}
	}
	// The same user, as if its home had gone.
	svc.users.mu.Lock()
	id.Home = filepath.Join(dir, "gone")
	svc.users.cache[me] = id
	svc.users.mu.Unlock()
	if o := run(t, c, sh(`pwd; echo "$PWD"; echo "$HOME"`)); o.stdout.String() != "/\n/\n"+id.Home+"\n" {
		t.Fatalf("without a home: %q", o.stdout.String())
	}
	pty := sh(`pwd`)
	pty.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}
	if o := run(t, c, pty); !strings.HasPrefix(o.pty.String(), "/\r\n") {
		t.Fatalf("a PTY without a home: %q", o.pty.String())
	}
}

// TestLifetimeTrailer: every Start reports the process's run time in its trailer (the stream's
// end is sent right after the process ends, so the run time must be known by then).
func TestLifetimeTrailer(t *testing.T) {
	c, _ := newClient(t)
	for i := range 200 {
		s, err := c.Start(context.Background(), connect.NewRequest(sh("true")))
		if err != nil {
			t.Fatal(err)
		}
		for s.Receive() {
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		us, err := strconv.ParseInt(s.ResponseTrailer().Get(LifetimeTrailer), 10, 64)
		_ = s.Close()
		if err != nil || us <= 0 {
			t.Fatalf("start %d: trailer %s = %q", i, LifetimeTrailer, s.ResponseTrailer().Get(LifetimeTrailer))
		}
	}
}
