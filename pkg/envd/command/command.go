package command

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/pkg/envd"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// Spec is one command.
type Spec struct {
	Cmd  string
	Args []string
	Env  map[string]string
	Cwd  string // "": envd's default
	User string // "": envd's default user
	Tag  string
}

// Options are how Run runs a command, beside its streams.
type Options struct {
	// OnStart, when set, is called with the process's pid as soon as envd reports it.
	OnStart func(pid uint32)
	// TrailerWait bounds the wait, after the command's end event, for the end of its stream,
	// which carries envd's lifetime trailer: a guest that holds the stream open is not waited
	// for longer. 0: wait for the stream's end (or ctx's).
	TrailerWait time.Duration
}

// Result is how a command ended.
type Result struct {
	PID      uint32
	ExitCode int
	// Status is envd's word for the end ("exit status 1", "signal: killed", or "error" when
	// envd could not wait for the process).
	Status string
	Exited bool
	// Error is envd's error for the end (a non-zero exit has one too).
	Error string
	// Lifetime is how long the process ran as envd measured it, from fork to reaping (0 when
	// envd did not say).
	Lifetime time.Duration
}

// ErrOutput is wrapped by Run's error when stdout or stderr refused the command's output.
var ErrOutput = errors.New("writing command output")

// ErrNoEnd is Run's error when envd's stream ends without the command's end event.
var ErrNoEnd = errors.New("envd closed the stream before the command ended")

// Run starts spec through pc, copies stdin (when not nil) to the command's standard input and
// closes it at stdin's end, writes the command's output to stdout and stderr as it comes, and
// returns how the command ended. The copy of stdin stops when Run returns; a read of stdin in
// progress then is not waited for (an io.Reader cannot be interrupted), and the goroutine doing
// it ends with that read.
func Run(ctx context.Context, pc processconnect.ProcessClient, spec Spec, stdin io.Reader, stdout, stderr io.Writer, opts Options) (Result, error) {
	// Ends the stream and the copy of stdin on every return.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: spec.Cmd, Args: spec.Args, Envs: spec.Env}}
	if spec.Cwd != "" {
		req.Process.Cwd = &spec.Cwd
	}
	if spec.Tag != "" {
		req.Tag = &spec.Tag
	}
	withStdin := stdin != nil
	req.Stdin = &withStdin
	stream, err := pc.Start(ctx, AsUser(connect.NewRequest(req), spec.User))
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = stream.Close() }()

	var res Result
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			res.PID = ev.Start.GetPid()
			if opts.OnStart != nil {
				opts.OnStart(res.PID)
			}
			if withStdin {
				// Its error is not Run's: a command whose input broke still ends, and its end
				// is what Run reports.
				go func(pid uint32) { _ = Feed(ctx, pc, pid, spec.User, stdin) }(res.PID)
			}
		case *pb.ProcessEvent_Data:
			var err error
			switch out := ev.Data.GetOutput().(type) {
			case *pb.ProcessEvent_DataEvent_Stdout:
				_, err = stdout.Write(out.Stdout)
			case *pb.ProcessEvent_DataEvent_Stderr:
				_, err = stderr.Write(out.Stderr)
			}
			if err != nil {
				return res, fmt.Errorf("%w: %w", ErrOutput, err)
			}
		case *pb.ProcessEvent_End:
			res.ExitCode = int(ev.End.GetExitCode())
			res.Status = ev.End.GetStatus()
			res.Exited = ev.End.GetExited()
			res.Error = ev.End.GetError()
			res.Lifetime = lifetime(stream, opts.TrailerWait, cancel)
			return res, nil
		}
	}
	if err := stream.Err(); err != nil {
		return res, err
	}
	return res, ErrNoEnd
}

// lifetime reads the rest of a command's stream, after its end event, for envd's lifetime
// trailer, which comes with the stream's end. After wait (when not 0) the stream is ended by
// cancel instead.
func lifetime(stream *connect.ServerStreamForClient[pb.StartResponse], wait time.Duration, cancel context.CancelFunc) time.Duration {
	if wait > 0 {
		t := time.AfterFunc(wait, cancel)
		defer t.Stop()
	}
	for stream.Receive() {
	}
	us, err := strconv.ParseInt(stream.ResponseTrailer().Get(envd.LifetimeTrailer), 10, 64)
	if err != nil || us < 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}

// Feed copies r to the standard input of process pid (as user), then closes it. It stops at
// ctx's end (the read in progress then finishes first).
func Feed(ctx context.Context, pc processconnect.ProcessClient, pid uint32, user string, r io.Reader) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			in := &pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: buf[:n]}}}
			if _, serr := pc.SendInput(ctx, AsUser(connect.NewRequest(in), user)); serr != nil {
				return fmt.Errorf("sending input to process %d: %w", pid, serr)
			}
		}
		if err != nil {
			_, cerr := pc.CloseStdin(ctx, AsUser(connect.NewRequest(&pb.CloseStdinRequest{Process: sel}), user))
			if errors.Is(err, io.EOF) {
				return cerr
			}
			return fmt.Errorf("reading input for process %d: %w", pid, err)
		}
	}
}

// AsUser sets the user a request to envd (process or filesystem) runs as: E2B's convention is
// Basic auth with the user's name and no password. "" leaves envd's default user.
func AsUser[T any](req *connect.Request[T], user string) *connect.Request[T] {
	if user != "" {
		req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	}
	return req
}
