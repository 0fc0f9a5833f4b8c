package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cellhq/cell/internal/channel"
)

// TestFakeQEMU is not a test: run as a child of the test binary (with CELL_FAKE_QEMU_DIR set) it
// stands in for an adoptable VM's QEMU, whose guest never answers on the channel, or with
// CELL_FAKE_ENVD set answers it as envd does (one host at a time, a 204 to every request). Its
// command line carries "-name cell-<id>" as QEMU's does (after "--", which the test flags end at).
func TestFakeQEMU(t *testing.T) {
	dir := os.Getenv("CELL_FAKE_QEMU_DIR")
	if dir == "" {
		t.Skip("only run as a stand-in QEMU")
	}
	listen := func(name string) net.Listener {
		ln, err := net.Listen("unix", filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	silent := []string{"ch.sock", "console.sock"}
	if os.Getenv("CELL_FAKE_ENVD") != "" {
		silent = silent[1:]
		ln := listen("ch.sock")
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				// As QEMU does, the next host is accepted once this one has gone.
				if sess, err := channel.Serve(c, slog.New(slog.DiscardHandler), channel.GuestHooks{}); err == nil {
					_ = http.Serve(sess, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
				}
				_ = c.Close()
			}
		}()
	}
	for _, name := range silent {
		ln := listen(name)
		go func() {
			var held []net.Conn // accepted and never answered, as by a silent guest
			defer func() {
				for _, c := range held {
					_ = c.Close()
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				held = append(held, c)
			}
		}()
	}
	qmpLn := listen("qmp.sock")
	for {
		c, err := qmpLn.Accept()
		if err != nil {
			return
		}
		go serveFakeQMP(c)
	}
}

// serveFakeQMP answers QMP as a running QEMU would, enough for Adopt.
func serveFakeQMP(c net.Conn) {
	defer func() { _ = c.Close() }()
	_, _ = c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}` + "\n"))
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var req struct {
			Execute string `json:"execute"`
			ID      string `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &req) != nil {
			return
		}
		ret := any(struct{}{})
		if req.Execute == "query-status" {
			ret = map[string]any{"running": true, "status": "running"}
		}
		b, _ := json.Marshal(map[string]any{"return": ret, "id": req.ID})
		if _, err := c.Write(append(b, '\n')); err != nil {
			return
		}
	}
}

type fakeQEMU struct {
	cmd   *exec.Cmd
	pid   int
	ticks uint64
}

// startFakeQEMU runs a stand-in QEMU for VM id in runDir/id (its guest answering like envd when
// envd).
func startFakeQEMU(t *testing.T, runDir, id string, envd bool) *fakeQEMU {
	t.Helper()
	dir := filepath.Join(runDir, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFakeQEMU$", "--", "-name", "cell-"+id)
	cmd.Env = append(os.Environ(), "CELL_FAKE_QEMU_DIR="+dir)
	if envd {
		cmd.Env = append(cmd.Env, "CELL_FAKE_ENVD=1")
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(filepath.Join(dir, "qmp.sock")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stand-in QEMU did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ticks, err := ProcessStartTicks(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeQEMU{cmd: cmd, pid: cmd.Process.Pid, ticks: ticks}
}

// A VM whose QEMU is ours is adopted even though its guest never answers and the VM limit is
// already reached; no VM starts until the adopted ones have ended; a VM whose QEMU is gone is not
// adopted.
func TestAdoptDecision(t *testing.T) {
	h := testHost(t, 1)
	a := startFakeQEMU(t, h.cfg.RunDir, "a1", false)
	b := startFakeQEMU(t, h.cfg.RunDir, "b1", false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t0 := time.Now()
	vmA, err := h.Adopt(ctx, "a1", a.pid, a.ticks)
	if err != nil {
		t.Fatalf("adopting a VM whose guest does not answer: %v", err)
	}
	vmB, err := h.Adopt(ctx, "b1", b.pid, b.ticks)
	if err != nil {
		t.Fatalf("adopting a VM past the limit: %v", err)
	}
	if took := time.Since(t0); took > 3*time.Second {
		t.Fatalf("adoption waited %v for the guest", took)
	}
	if used, over := h.Slots(); used != 2 || over != 1 {
		t.Fatalf("slots used %d, over %d; want 2, 1", used, over)
	}
	// envd does not answer: a caller's wait for it ends with its context, and the VM lives on.
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = vmA.Session(sctx)
	scancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("session with a silent guest: %v", err)
	}
	if err := syscall.Kill(a.pid, 0); err != nil || !IsOurs(a.pid, a.ticks, "a1") {
		t.Fatalf("the adopted VM's process: %v", err)
	}

	// No VM starts while the adopted ones hold the limit and more.
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(t.TempDir(), "base.qcow2") // Start reads its size before it waits
	qemuImgCreate(t, h.cfg.QEMUImg, base, "64M")
	start := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := h.Start(ctx, Spec{ID: "c1", Kernel: kernel, BaseDisk: base, MemoryMiB: 256, CPUs: 1, Accel: AccelTCG})
		return err
	}
	if err := start(); err == nil || !strings.Contains(err.Error(), "slot") {
		t.Fatalf("start with 2 VMs adopted, limit 1: %v", err)
	}
	vmA.Detach()
	if err := start(); err == nil || !strings.Contains(err.Error(), "slot") {
		t.Fatalf("start with 1 VM adopted, limit 1: %v", err)
	}
	vmB.Detach()
	if err := start(); err == nil || strings.Contains(err.Error(), "slot") {
		t.Fatalf("start with no VM: %v (want it past the slot, failing on the fake base disk)", err)
	}
	if used, over := h.Slots(); used != 0 || over != 0 {
		t.Fatalf("slots used %d, over %d after everything ended", used, over)
	}

	// A QEMU that is gone is not ours to adopt.
	_ = a.cmd.Process.Kill()
	_ = a.cmd.Wait()
	if _, err := h.Adopt(ctx, "a1", a.pid, a.ticks); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("adopting a VM whose QEMU is gone: %v", err)
	}
}

// An adopted VM's session with envd is made in the background and made again whenever it is
// gone; while the channel is suspended (a save) there is none, at once; after the VM is let go
// of there is none either, and nothing of it is left running here.
func TestSessionComesBack(t *testing.T) {
	h := testHost(t, 4)
	q := startFakeQEMU(t, h.cfg.RunDir, "s1", true)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vm, err := h.Adopt(ctx, "s1", q.pid, q.ticks)
	if err != nil {
		t.Fatal(err)
	}
	get := func() error {
		s, err := vm.Session(ctx)
		if err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://envd/health", nil)
		resp, err := s.HTTPClient().Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return errors.New(resp.Status)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatalf("first session: %v", err)
	}
	first, _ := vm.Session(ctx)
	_ = first.Close() // the session ends (as when the guest drops it)
	if err := get(); err != nil {
		t.Fatalf("session after the first one ended: %v", err)
	}
	if again, _ := vm.Session(ctx); again == first {
		t.Fatal("the ended session was handed out again")
	}
	vm.SuspendChannel()
	t0 := time.Now()
	if _, err := vm.Session(ctx); !errors.Is(err, ErrChannelSuspended) || time.Since(t0) > time.Second {
		t.Fatalf("session while suspended: %v after %v", err, time.Since(t0))
	}
	vm.ResumeChannel()
	if err := get(); err != nil {
		t.Fatalf("session after the suspension: %v", err)
	}
	vm.Detach()
	if _, err := vm.Session(ctx); !errors.Is(err, errVMClosed) {
		t.Fatalf("session after Detach: %v", err)
	}
}
