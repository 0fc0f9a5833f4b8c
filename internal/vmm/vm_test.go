package vmm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testHost(t *testing.T, max int) *Host {
	t.Helper()
	h, err := NewHost(Config{QEMU: "/usr/bin/qemu-system-x86_64", QEMUImg: "/usr/bin/qemu-img",
		RunDir: t.TempDir(), MaxVMs: max, TSCkHz: 1000000})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNewHostValidates(t *testing.T) {
	if _, err := NewHost(Config{QEMUImg: "x", MaxVMs: 1}); err == nil {
		t.Error("missing QEMU accepted")
	}
	if _, err := NewHost(Config{QEMU: "x", QEMUImg: "x", MaxVMs: 0}); err == nil || !strings.Contains(err.Error(), "max VMs") {
		t.Errorf("zero MaxVMs: %v", err)
	}
}

// Permanent failures are reported at once, are not BootErrors (QEMU never ran), and free the slot.
func TestStartPermanentFailures(t *testing.T) {
	h := testHost(t, 1)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cases := map[string]Spec{
		"vm id":     {ID: "../etc", Kernel: kernel, BaseDisk: kernel},
		"base disk": {ID: "a1", Kernel: kernel, BaseDisk: filepath.Join(dir, "missing.qcow2")},
		"kernel":    {ID: "a2", Kernel: filepath.Join(dir, "missing"), BaseDisk: kernel},
	}
	for field, spec := range cases {
		_, err := h.Start(ctx, spec)
		var be *BootError
		if err == nil || !strings.Contains(err.Error(), field) || errors.As(err, &be) {
			t.Errorf("%s: err = %v", field, err)
		}
	}
	// The base disk has a qcow2 header but nothing a qcow2 image needs after it: qemu-img
	// refuses; the slot must be free again.
	bad := filepath.Join(dir, "bad.qcow2")
	if err := os.WriteFile(bad, append([]byte("QFI\xfb"), make([]byte, 60)...), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := h.Start(ctx, Spec{ID: "a3", Kernel: kernel, BaseDisk: bad, MemoryMiB: 256, CPUs: 1, Accel: AccelTCG})
	if err == nil || !strings.Contains(err.Error(), "overlay") {
		t.Fatalf("bad base disk: %v", err)
	}
	if used, _ := h.Slots(); used != 0 {
		t.Fatal("a failed start kept its VM slot")
	}
	entries, _ := os.ReadDir(h.cfg.RunDir)
	if len(entries) != 0 {
		t.Fatalf("a failed start left %d entries in the run dir", len(entries))
	}
}

func TestCrashedIsOnlyACrashSignal(t *testing.T) {
	for _, c := range []struct {
		script string
		want   bool
	}{
		{"kill -SEGV $$", true},
		{"kill -ABRT $$", true},
		{"kill -KILL $$", false},
		{"kill -TERM $$", false},
		{"exit 1", false},
	} {
		err := exec.Command("sh", "-c", c.script).Run()
		if got := crashed(err); got != c.want {
			t.Errorf("%q: crashed(%v) = %v, want %v", c.script, err, got, c.want)
		}
	}
	if crashed(nil) {
		t.Error("crashed(nil)")
	}
}

func TestParseTBCount(t *testing.T) {
	// QEMU 7.2's `info jit` (abridged).
	info := "Translation buffer state:\r\ngen code size       36514563/134152192\r\nTB count            61234\r\nTB avg target size  17 max=1776 bytes\r\n"
	if n, err := parseTBCount(strings.ReplaceAll(info, "\r", "")); err != nil || n != 61234 {
		t.Fatalf("got %d, %v; want 61234", n, err)
	}
	if n, err := parseTBCount(info); err != nil || n != 61234 {
		t.Fatalf("with CRLF: got %d, %v; want 61234", n, err)
	}
	for _, bad := range []string{"", "JIT information is only available with accel=tcg\r\n", "TB count            many\r\n"} {
		if n, err := parseTBCount(bad); err == nil {
			t.Fatalf("%q: got %d, want an error", bad, n)
		}
	}
}

// fakeQEMUHost is a Host whose "QEMU" is a shell script: QEMU that fails in a chosen way once
// launched, the boundary these tests break on purpose. The disk is a real qcow2.
func fakeQEMUHost(t *testing.T, script string, attempts int) (*Host, Spec) {
	t.Helper()
	dir := t.TempDir()
	qemu := filepath.Join(dir, "qemu")
	if err := os.WriteFile(qemu, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.qcow2")
	qemuImg := needQEMUImg(t)
	qemuImgCreate(t, qemuImg, base, "64M")
	h, err := NewHost(Config{QEMU: qemu, QEMUImg: qemuImg, RunDir: filepath.Join(dir, "run"), MaxVMs: 1,
		TSCkHz: 1000000, Attempts: attempts, BootTimeout: 500 * time.Millisecond, StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return h, Spec{ID: "f1", Kernel: base, BaseDisk: base, MemoryMiB: 128, CPUs: 1, Accel: AccelTCG}
}

// assertUndone checks that a failed start left nothing: no VM directory, no slot, no claim.
func assertUndone(t *testing.T, h *Host) {
	t.Helper()
	entries, _ := os.ReadDir(h.cfg.RunDir)
	if len(entries) != 0 {
		t.Errorf("a failed start left %d entries in the run dir", len(entries))
	}
	if used, _ := h.Slots(); used != 0 {
		t.Error("a failed start kept its VM slot")
	}
}

// A QEMU that exits once launched fails the start with a BootError that says so and carries what
// QEMU printed; a refused configuration is not retried.
func TestStartQEMUExits(t *testing.T) {
	h, spec := fakeQEMUHost(t, `echo "qemu: refusing this machine" >&2; exit 1`, 3)
	_, err := h.Start(context.Background(), spec)
	var be *BootError
	if !errors.As(err, &be) || !errors.Is(err, ErrQEMUExited) || be.Transient {
		t.Fatalf("err = %v, want a permanent BootError wrapping ErrQEMUExited", err)
	}
	if !strings.Contains(be.QEMUStderr, "refusing this machine") {
		t.Errorf("QEMU's stderr is missing from the error: %q", be.QEMUStderr)
	}
	assertUndone(t, h)
}

// A QEMU that crashes is worth another try: each attempt is undone and the next one starts in a
// new working directory of the same name.
func TestStartQEMUCrashesIsRetried(t *testing.T) {
	count := filepath.Join(t.TempDir(), "launches")
	h, spec := fakeQEMUHost(t, `echo x >>`+count+`; kill -SEGV $$`, 2)
	_, err := h.Start(context.Background(), spec)
	var be *BootError
	if !errors.As(err, &be) || !be.Transient || !errors.Is(err, ErrQEMUExited) {
		t.Fatalf("err = %v, want a transient BootError", err)
	}
	if b, _ := os.ReadFile(count); strings.Count(string(b), "x") != 2 {
		t.Errorf("QEMU was launched %d times, want 2", strings.Count(string(b), "x"))
	}
	assertUndone(t, h)
}

// A QEMU that never serves QMP runs into the boot timeout, is stopped, and leaves nothing.
func TestStartBootTimeout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	h, spec := fakeQEMUHost(t, `echo $$ >`+pidFile+`; exec sleep 30`, 1)
	start := time.Now()
	_, err := h.Start(context.Background(), spec)
	var be *BootError
	if !errors.As(err, &be) || !be.Transient || !errors.Is(err, errBootTimeout) || !strings.Contains(err.Error(), "connecting to QMP") {
		t.Fatalf("err = %v, want a transient BootError for the boot timeout while connecting to QMP", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the failed start took %v", d)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + strings.TrimSpace(string(b))); err == nil {
		t.Error("QEMU still runs after the failed start")
	}
	assertUndone(t, h)
}
