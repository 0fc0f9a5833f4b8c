package command

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/pkg/envd"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// Every goroutine Run starts (the copy of stdin among them) has ended when the tests have.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve serves h as envd's process service and returns a client of it.
func serve(t *testing.T, h processconnect.ProcessHandler) processconnect.ProcessClient {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(h))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return processconnect.NewProcessClient(srv.Client(), srv.URL)
}

// realEnvd serves the guest's own process service, running commands on this host as its user
// (the test is a test of the host's side against the real guest side, not of envd).
func realEnvd(t *testing.T) (processconnect.ProcessClient, string) {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	svc := process.New(slog.New(slog.DiscardHandler), state.New(u.Username), &process.Users{})
	t.Cleanup(svc.Close)
	return serve(t, svc), u.Username
}

func TestRunAgainstEnvd(t *testing.T) {
	pc, me := realEnvd(t)
	ctx := t.Context()
	var out, errb bytes.Buffer
	var started uint32
	res, err := Run(ctx, pc, Spec{Cmd: "/bin/sh", Args: []string{"-c", `echo "$FOO $(pwd) $(id -un)"; echo oops >&2; exit 3`},
		Env: map[string]string{"FOO": "bar"}, Cwd: os.TempDir(), User: me},
		nil, &out, &errb, Options{OnStart: func(pid uint32) { started = pid }})
	if err != nil {
		t.Fatal(err)
	}
	if want := "bar " + os.TempDir() + " " + me + "\n"; out.String() != want || errb.String() != "oops\n" {
		t.Fatalf("stdout %q (want %q), stderr %q", out.String(), want, errb.String())
	}
	if res.ExitCode != 3 || !res.Exited || res.PID == 0 || res.PID != started || res.Error == "" {
		t.Fatalf("result %+v, OnStart saw pid %d", res, started)
	}
	// envd's trailer (pkg/envd's name for it) reached Run.
	if res.Lifetime <= 0 || res.Lifetime > time.Minute {
		t.Fatalf("lifetime %v: envd's %s trailer was not read", res.Lifetime, envd.LifetimeTrailer)
	}
}

// Input reaches the command whole and is closed at its end (cat ends only on EOF).
func TestRunFeedsStdin(t *testing.T) {
	pc, me := realEnvd(t)
	in := bytes.Repeat([]byte("0123456789abcdef"), 20<<10) // 320 KiB: several SendInput calls
	var out bytes.Buffer
	res, err := Run(t.Context(), pc, Spec{Cmd: "cat", User: me}, bytes.NewReader(in), &out, &bytes.Buffer{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("exit %d, %d bytes out of %d in", res.ExitCode, out.Len(), len(in))
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunOutputRefused(t *testing.T) {
	pc, me := realEnvd(t)
	_, err := Run(t.Context(), pc, Spec{Cmd: "echo", Args: []string{"hi"}, User: me}, nil, failWriter{}, failWriter{}, Options{})
	if !errors.Is(err, ErrOutput) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err %v, want ErrOutput with the writer's error", err)
	}
}

// hostile is an envd that answers Start with a script of its own.
type hostile struct {
	processconnect.UnimplementedProcessHandler
	start func(ctx context.Context, out *connect.ServerStream[pb.StartResponse]) error
}

func (h hostile) Start(ctx context.Context, _ *connect.Request[pb.StartRequest], out *connect.ServerStream[pb.StartResponse]) error {
	return h.start(ctx, out)
}

func send(out *connect.ServerStream[pb.StartResponse], ev *pb.ProcessEvent) error {
	return out.Send(&pb.StartResponse{Event: ev})
}

func startEv(pid uint32) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: pid}}}
}

func endEv(code int32, status string) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: &pb.ProcessEvent_EndEvent{ExitCode: code, Exited: true, Status: status}}}
}

// A guest that holds the stream open after the end event is waited for TrailerWait, no longer.
func TestRunTrailerWaitBounded(t *testing.T) {
	pc := serve(t, hostile{start: func(ctx context.Context, out *connect.ServerStream[pb.StartResponse]) error {
		out.ResponseTrailer().Set(envd.LifetimeTrailer, "1000")
		if err := send(out, startEv(7)); err != nil {
			return err
		}
		if err := send(out, endEv(0, "exit status 0")); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}})
	t0 := time.Now()
	res, err := Run(t.Context(), pc, Spec{Cmd: "x"}, nil, &bytes.Buffer{}, &bytes.Buffer{}, Options{TrailerWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("Run waited %v for a stream held open", d)
	}
	if res.PID != 7 || res.Lifetime != 0 {
		t.Fatalf("result %+v: no trailer came, the lifetime is unknown", res)
	}
}

func TestRunHostileStreams(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trailer string
		events  []*pb.ProcessEvent
		err     error // nil: Run succeeds
		check   func(Result) bool
	}{
		{"no end event", "", []*pb.ProcessEvent{startEv(1)}, ErrNoEnd, nil},
		{"nothing at all", "", nil, ErrNoEnd, nil},
		{"negative lifetime", "-5", []*pb.ProcessEvent{startEv(1), endEv(0, "")}, nil, func(r Result) bool { return r.Lifetime == 0 }},
		{"garbage lifetime", "soon", []*pb.ProcessEvent{startEv(1), endEv(0, "")}, nil, func(r Result) bool { return r.Lifetime == 0 }},
		{"lifetime", "1500", []*pb.ProcessEvent{startEv(1), endEv(0, "")}, nil, func(r Result) bool { return r.Lifetime == 1500*time.Microsecond }},
		{"envd could not wait", "", []*pb.ProcessEvent{startEv(1), endEv(-1, "error")}, nil, func(r Result) bool { return r.Status == "error" && r.ExitCode == -1 }},
		{"end without start", "", []*pb.ProcessEvent{endEv(2, "")}, nil, func(r Result) bool { return r.ExitCode == 2 && r.PID == 0 }},
		{"empty events", "", []*pb.ProcessEvent{{}, startEv(1), {}, endEv(0, "")}, nil, func(r Result) bool { return r.PID == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := serve(t, hostile{start: func(_ context.Context, out *connect.ServerStream[pb.StartResponse]) error {
				if tc.trailer != "" {
					out.ResponseTrailer().Set(envd.LifetimeTrailer, tc.trailer)
				}
				for _, ev := range tc.events {
					if err := send(out, ev); err != nil {
						return err
					}
				}
				return nil
			}})
			res, err := Run(t.Context(), pc, Spec{Cmd: "x"}, nil, &bytes.Buffer{}, &bytes.Buffer{}, Options{TrailerWait: time.Second})
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.check != nil && !tc.check(res) {
				t.Fatalf("result %+v", res)
			}
		})
	}
}

// A refused Start is Run's error; the copy of stdin never starts.
func TestRunStartRefused(t *testing.T) {
	pc := serve(t, hostile{start: func(context.Context, *connect.ServerStream[pb.StartResponse]) error {
		return connect.NewError(connect.CodePermissionDenied, errors.New("no such user"))
	}})
	_, err := Run(t.Context(), pc, Spec{Cmd: "x", User: "nobody"}, strings.NewReader("in"), &bytes.Buffer{}, &bytes.Buffer{}, Options{})
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("err %v", err)
	}
}

func TestAsUser(t *testing.T) {
	req := AsUser(connect.NewRequest(&pb.ListRequest{}), "root")
	if got := process.UserFromHeader(req.Header()); got != "root" {
		t.Fatalf("envd reads user %q from %q", got, req.Header().Get("Authorization"))
	}
	if AsUser(connect.NewRequest(&pb.ListRequest{}), "").Header().Get("Authorization") != "" {
		t.Fatal(`AsUser("") set a user`)
	}
}
