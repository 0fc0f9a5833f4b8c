package qmp

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRealQEMU drives a real QEMU process (no guest: -M none) over QMP.
func TestRealQEMU(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 is required for this test (apt-get install qemu-system-x86): %v", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command(qemu, "-M", "none", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c *Client
	for {
		c, err = Dial(ctx, sock)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("dial: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" || st.Running {
		t.Fatalf("status = %+v, want prelaunch, not running", st)
	}
	// Concurrent commands are matched to their own replies.
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func() {
			var v struct {
				QEMU struct{ Major int } `json:"qemu"`
			}
			err := c.Execute(ctx, "query-version", nil, &v)
			if err == nil && v.QEMU.Major < 5 {
				err = errors.New("implausible QEMU major version")
			}
			errs <- err
		}()
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// An unknown command is an Error with QEMU's class.
	err = c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command error = %v, want CommandNotFound", err)
	}
	// A descriptor handed over with AddFD is QEMU's under its name (closefd finds it once).
	f, err := os.CreateTemp(dir, "fd")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddFD(ctx, "passed", f); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	if err := c.Execute(ctx, "closefd", map[string]string{"fdname": "passed"}, nil); err != nil {
		t.Fatalf("closefd of a passed descriptor: %v", err)
	}
	if err := c.Execute(ctx, "closefd", map[string]string{"fdname": "passed"}, nil); err == nil {
		t.Fatal("closefd found a descriptor twice")
	}
	if err := c.Execute(ctx, "getfd", map[string]string{"fdname": "none"}, nil); err == nil {
		t.Fatal("getfd without a descriptor succeeded")
	}
	// quit: QEMU exits, the client notices, later commands fail with ErrClosed.
	if err := c.Execute(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("client did not notice QEMU exit")
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after quit: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Close() // idempotent
}

func TestGreetingRequired(t *testing.T) {
	a, b := net.Pipe()
	go func() { _, _ = b.Write([]byte("{\"hello\": 1}\n")); _ = b.Close() }()
	_, err := NewClient(context.Background(), a)
	if err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("err = %v, want a greeting error", err)
	}
}

func TestGreetingTimeout(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewClient(ctx, a)
	if err == nil {
		t.Fatal("want an error from a silent peer")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("context was not honoured")
	}
}
