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
