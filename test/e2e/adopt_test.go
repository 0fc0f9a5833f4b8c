package e2e

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

// killIfOurs kills VM id's QEMU, left running on purpose, unless it is gone (its pid may be
// another process's by now).
func killIfOurs(t *testing.T, id string, pid int, ticks uint64) {
	t.Cleanup(func() {
		if vmm.IsOurs(pid, ticks, id) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// sbRun runs a shell command in sb as root, bounded by d, and returns its stdout.
func sbRun(sb *sandbox.Sandbox, d time.Duration, cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out, errb bytes.Buffer
	res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/sh", Args: []string{"-c", cmd}, User: "root"}, nil, &out, &errb, nil)
	if err == nil && res.ExitCode != 0 {
		err = errors.New("exit " + res.Status + ": " + errb.String())
	}
	return out.String(), err
}

// mustRun is sbRun that fails the test on error.
func mustRun(t *testing.T, sb *sandbox.Sandbox, cmd string) string {
	t.Helper()
	out, err := sbRun(sb, time.Minute, cmd)
	if err != nil {
		t.Fatalf("%q in %s: %v", cmd, sb.ID, err)
	}
	return out
}

// TestAdoptPastMaxVMs: a runtime whose VM limit is below the number of VMs left running adopts
// them all (healthy, they keep running), and starts no new VM until they are below the limit.
func TestAdoptPastMaxVMs(t *testing.T) {
	rd := runDir(t)
	rt1 := newRuntime(t, rd, func(c *sandbox.RuntimeConfig) { c.Detached, c.DieWithParent = true, false })
	ctx := context.Background()
	type left struct {
		id    string
		pid   int
		ticks uint64
	}
	var vms []left
	for i := 0; i < 2; i++ {
		sb, err := rt1.Boot(ctx, sandbox.Options{})
		if err != nil {
			t.Fatal(err)
		}
		pid := sb.VM.PID
		killIfOurs(t, sb.ID, pid, sb.VM.StartTicks)
		mustRun(t, sb, "echo "+sb.ID+" > /tmp/id")
		vms = append(vms, left{sb.ID, pid, sb.VM.StartTicks})
		sb.Detach()
	}
	rt2 := newRuntime(t, rd, func(c *sandbox.RuntimeConfig) { c.Detached, c.DieWithParent, c.MaxVMs = true, false, 1 })
	var adopted []*sandbox.Sandbox
	for _, v := range vms {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		sb, err := rt2.Adopt(actx, v.id, v.pid, v.ticks, nil)
		cancel()
		if err != nil {
			t.Fatalf("adopting %s with --max-vms 1: %v", v.id, err)
		}
		adopted = append(adopted, sb)
	}
	for _, sb := range adopted {
		if out := mustRun(t, sb, "cat /tmp/id"); out != sb.ID+"\n" {
			t.Fatalf("adopted %s: %q", sb.ID, out)
		}
	}
	if used, over := rt2.Slots(); used != 2 || over != 1 {
		t.Fatalf("slots: %d used, %d over; want 2, 1", used, over)
	}
	boot := func() (*sandbox.Sandbox, error) {
		bctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		return rt2.Boot(bctx, sandbox.Options{})
	}
	for i, sb := range adopted {
		if _, err := boot(); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "slot") {
			t.Fatalf("boot with %d VMs adopted and a limit of 1: %v, want a wait for a slot", 2-i, err)
		}
		if err := sb.Close(); err != nil {
			t.Fatal(err)
		}
	}
	sb, err := rt2.Boot(ctx, sandbox.Options{})
	if err != nil {
		t.Fatalf("boot once the adopted VMs are gone: %v", err)
	}
	_ = sb.Close()
}
