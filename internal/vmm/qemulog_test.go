package vmm

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startLikeQEMU starts script (sh) the way startOnce starts a detached QEMU: its output through
// the VM directory's pipe. $1 is the directory.
func startLikeQEMU(t *testing.T, dir WorkDir, script string) (*exec.Cmd, *qemuOutput) {
	t.Helper()
	out, err := newQEMUOutput(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", script, "sh", dir.Path)
	out.attach(cmd)
	if err := cmd.Start(); err != nil {
		out.stop()
		t.Fatal(err)
	}
	if err := out.started(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, out
}

// waitFor waits until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// QEMU writing without end leaves a bounded qemu.log: its beginning and its end.
func TestQEMULogBounded(t *testing.T) {
	dir := WorkDir{Path: t.TempDir()}
	// 16 MiB as fast as it goes (a write finding the pipe full fails: the writer goes on), then,
	// once the pipe is drained, a last line.
	cmd, out := startLikeQEMU(t, dir, `echo FIRST >&2; i=0; while [ $i -lt 4 ]; do head -c 4194304 /dev/zero | tr '\0' 'x' >&2; i=$((i+1)); done; sleep 0.5; echo LAST >&2`)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	out.finish(10 * time.Second)
	b, err := os.ReadFile(dir.File(qemuLog))
	if err != nil {
		t.Fatal(err)
	}
	if max := qemuLogHead + len(qemuCutMarker) + qemuLogTail; len(b) > max {
		t.Fatalf("qemu.log is %d bytes, more than %d", len(b), max)
	}
	if !bytes.HasPrefix(b, []byte("FIRST\n")) || !bytes.HasSuffix(b, []byte("LAST\n")) || !bytes.Contains(b, []byte(qemuCutMarker)) {
		t.Fatalf("qemu.log: %q ... %q", b[:20], b[len(b)-20:])
	}
	vm := &VM{dir: dir, detached: true}
	if s := vm.stderrText(); !strings.HasSuffix(s, "LAST\n") {
		t.Fatalf("stderrText ends %q", s[max(0, len(s)-20):])
	}
}

// A QEMU whose daemon went away (--leave-running, or killed) neither dies of SIGPIPE nor blocks
// when its output pipe is full; the next daemon drains what the pipe holds and what comes after,
// into the same bounded log.
func TestQEMUOutputOutlivesDaemon(t *testing.T) {
	dir := WorkDir{Path: t.TempDir()}
	cmd, out := startLikeQEMU(t, dir, `
		wait_for() { while [ ! -e "$1/$2" ]; do sleep 0.01; done; }
		echo FIRST >&2
		wait_for "$1" detached
		head -c 1048576 /dev/zero >&2   # 1 MiB into a pipe nobody drains: 64 KiB fit
		echo $? > "$1/wrote"
		wait_for "$1" adopted
		echo AFTER >&2
		exit 0`)
	log := func() string { b, _ := os.ReadFile(dir.File(qemuLog)); return string(b) }
	waitFor(t, "the first line in qemu.log", func() bool { return strings.Contains(log(), "FIRST") })
	out.stop() // the daemon goes away
	if err := os.WriteFile(dir.File("detached"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the writer to get past a full pipe", func() bool {
		_, err := os.Stat(dir.File("wrote"))
		return err == nil || cmd.ProcessState != nil
	})
	// head, writing, failed (EAGAIN) instead of dying of SIGPIPE (exit status 128+13).
	if b, _ := os.ReadFile(dir.File("wrote")); strings.TrimSpace(string(b)) == "141" {
		t.Fatal("the writer was killed by SIGPIPE with no daemon attached")
	}
	adopted := adoptQEMUOutput(dir)
	if adopted == nil {
		t.Fatal("the next daemon found no output pipe")
	}
	if err := os.WriteFile(dir.File("adopted"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() {
			t.Fatalf("the writer was killed by %v", ws.Signal())
		}
	}
	if err != nil {
		t.Fatalf("the writer: %v", err)
	}
	adopted.finish(10 * time.Second)
	l := log()
	if !strings.HasPrefix(l, "FIRST\n") || !strings.HasSuffix(l, "AFTER\n") || len(l) > qemuLogHead+len(qemuCutMarker)+qemuLogTail {
		t.Fatalf("qemu.log: %d bytes, %q ... %q", len(l), l[:min(len(l), 20)], l[max(0, len(l)-20):])
	}
	// What the pipe held while no daemon was there came through (some of the 1 MiB of zeros).
	if !strings.Contains(l, "\x00\x00\x00\x00") {
		t.Fatal("nothing written while detached reached qemu.log")
	}
}

// A daemon restarted over a capped qemu.log goes on with the same head and tail.
func TestCappedLogReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), qemuLog)
	c, err := openCappedLog(path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("HEAD"))
	_, _ = c.Write(bytes.Repeat([]byte("a"), qemuLogHead+qemuLogTail))
	_, _ = c.Write([]byte("END1"))
	_ = c.f.Close()
	c, err = openCappedLog(path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("END2"))
	_ = c.f.Close()
	b, _ := os.ReadFile(path)
	if len(b) != qemuLogHead+len(qemuCutMarker)+qemuLogTail || !bytes.HasPrefix(b, []byte("HEAD")) || !bytes.HasSuffix(b, []byte("END1END2")) {
		t.Fatalf("%d bytes, %q ... %q", len(b), b[:8], b[len(b)-8:])
	}
}
