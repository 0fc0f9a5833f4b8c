package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOneDaemonPerDataDirectory: a second `cell serve` on a data directory in use stops with a
// message naming the first, before it touches anything (it used to take the first one's VMs for
// orphans: killed, their directories removed); `cell run` on the same directory leaves the
// daemon's sandboxes alone.
func TestOneDaemonPerDataDirectory(t *testing.T) {
	d := newDaemon(t)
	first, c := d.serve(t)
	ctx := context.Background()
	id := createSandbox(t, c, 10*time.Minute)
	execOut(t, c, id, "echo before > ~/mark")

	second := exec.Command(testEnv.cell, "serve", "--listen", "127.0.0.1:0")
	second.Env = serveEnv(d.home)
	var errb bytes.Buffer
	second.Stderr = &errb
	done := make(chan error, 1)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("a second cell serve on the same data directory exited 0:\n%s", errb.String())
		}
	case <-time.After(30 * time.Second):
		_ = second.Process.Kill()
		<-done
		t.Fatalf("a second cell serve on the same data directory kept running:\n%s", errb.String())
	}
	for _, want := range []string{"in use", "cell serve", fmt.Sprint(first.cmd.Process.Pid)} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("the second daemon's message does not say %q:\n%s", want, errb.String())
		}
	}

	// `cell run` on the same data directory (its VM in the same run/).
	run := exec.Command(testEnv.cell, "run", "--", "echo", "ran")
	run.Env = serveEnv(d.home)
	out, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ran") {
		t.Fatalf("cell run beside the daemon: %v\n%s", err, out)
	}

	// The first daemon's sandbox is untouched: running, its files there, its directory kept.
	if got := strings.TrimSpace(execOut(t, c, id, "cat ~/mark")); got != "before" {
		t.Fatalf("mark %q", got)
	}
	if _, err := os.Stat(filepath.Join(d.home, "run", id)); err != nil {
		t.Fatalf("the sandbox's directory: %v", err)
	}
	if got, err := c.Get(ctx, id); err != nil || got.State != "running" {
		t.Fatalf("after the second daemon: %+v %v\n%s", got, err, first.logs)
	}
}

// TestHugeTimeoutsRefused: timeouts that overflow time.Duration once made seconds are refused
// with a 400 on every route that takes one (18446744074 s used to become 0.29 s: the sandbox, a
// paused one with its saved state too, was gone within a second).
func TestHugeTimeoutsRefused(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	post := func(path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("POST", s.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-API-KEY", d.key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	const huge = 18446744074
	if code, body := post("/sandboxes", fmt.Sprintf(`{"templateID": "base", "timeout": %d}`, huge)); code != 400 || !strings.Contains(body, "timeout") {
		t.Fatalf("create: %d %s", code, body)
	}
	id := createSandbox(t, c, 10*time.Minute)
	if code, body := post("/sandboxes/"+id+"/timeout", fmt.Sprintf(`{"timeout": %d}`, huge)); code != 400 {
		t.Fatalf("timeout: %d %s", code, body)
	}
	if err := c.Pause(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/sandboxes/" + id + "/connect", "/v2/sandboxes/" + id + "/connect", "/sandboxes/" + id + "/resume"} {
		if code, body := post(path, fmt.Sprintf(`{"timeout": %d}`, huge)); code != 400 || !strings.Contains(body, "timeout") {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
	time.Sleep(2 * time.Second)
	if got, err := c.Get(ctx, id); err != nil || got.State != "paused" {
		t.Fatalf("after the refused calls: %+v %v\n%s", got, err, s.logs)
	}
	if err := c.Resume(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	// Resumed with no timeout named: the sandbox's own 10 minutes, not the create default.
	got, err := c.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(got.EndAt); left < 9*time.Minute || left > 10*time.Minute+5*time.Second {
		t.Fatalf("resumed with %v to live, want its own 10 minutes", left)
	}
	execOut(t, c, id, "true")
}

// TestServeLeavesCellRunAlone: a daemon starting on a data directory whose run/ holds a `cell run`
// VM leaves it running (it used to kill it as an orphan QEMU and remove its directory).
func TestServeLeavesCellRunAlone(t *testing.T) {
	d := newDaemon(t)
	run := exec.Command(testEnv.cell, "run", "--", "bash", "-c", "sleep 8; echo survived")
	run.Env = serveEnv(d.home)
	var out bytes.Buffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	t.Cleanup(func() { _ = run.Process.Kill() })
	// Wait for its VM to run.
	deadline := time.Now().Add(60 * time.Second)
	for len(qemuProcesses(t, filepath.Join(d.home, "run"))) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cell run started no VM:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s, _ := d.serve(t)
	select {
	case err := <-done:
		if err != nil || !strings.Contains(out.String(), "survived") {
			t.Fatalf("cell run beside a starting daemon: %v\n%s\ndaemon:\n%s", err, out.String(), s.logs)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("cell run did not finish:\n%s", out.String())
	}
	if strings.Contains(s.logs.String(), "orphan") {
		t.Errorf("the daemon took cell run's VM for an orphan:\n%s", s.logs)
	}
}
