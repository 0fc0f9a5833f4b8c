package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/bench"
	"github.com/cellhq/cell/pkg/client"
)

// TestForkAndSnapshotCLI: `cell sandbox fork --count 5` of a sandbox running a process: each fork
// has its own copy of the process, which keeps counting, its own host name and its own files;
// `cell sandbox snapshot` gives a template that new sandboxes start from.
func TestForkAndSnapshotCLI(t *testing.T) {
	d := newDaemon(t)
	srv, c := d.serve(t)
	ctx := context.Background()
	cellCLI := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(testEnv.cell, append([]string{"sandbox", "--api", srv.url, "--api-key", d.key}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Fatalf("cell sandbox %v: %v: %s%s", args, err, out, ee.Stderr)
			}
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	src := createSandbox(t, c, 10*time.Minute)
	t.Cleanup(func() { _ = c.Kill(ctx, src) })
	execOut(t, c, src, `echo source > /tmp/origin; (nohup python3 -c "
import time
n = 0
while True:
    n += 1
    open('/tmp/count.tmp', 'w').write(str(n)); __import__('os').replace('/tmp/count.tmp', '/tmp/count')
    time.sleep(0.05)" >/dev/null 2>&1 &)`)
	count := func(id string) int {
		t.Helper()
		n, err := strconv.Atoi(strings.TrimSpace(execOut(t, c, id, "cat /tmp/count 2>/dev/null || echo 0")))
		if err != nil {
			t.Fatalf("%s: counter: %v", id, err)
		}
		return n
	}
	deadline := time.Now().Add(30 * time.Second)
	for count(src) < 5 {
		if time.Now().After(deadline) {
			t.Fatal("the counter does not count")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ids := strings.Fields(cellCLI("fork", src, "--count", "5", "--timeout", "10m"))
	if len(ids) != 5 {
		t.Fatalf("fork printed %v", ids)
	}
	for _, id := range ids {
		t.Cleanup(func() { _ = c.Kill(ctx, id) })
	}
	at := map[string]int{}
	for _, id := range ids {
		if h := strings.TrimSpace(execOut(t, c, id, "hostname; cat /tmp/origin")); h != id+"\nsource" {
			t.Fatalf("fork %s: hostname and origin %q", id, h)
		}
		execOut(t, c, id, "echo "+id+" > /tmp/mine")
		at[id] = count(id)
	}
	time.Sleep(time.Second)
	for _, id := range append(ids, src) {
		if n := count(id); n <= at[id] {
			t.Errorf("%s: the counter stopped at %d", id, n)
		}
		mine := strings.TrimSpace(execOut(t, c, id, "cat /tmp/mine 2>/dev/null || echo none"))
		want := id
		if id == src {
			want = "none"
		}
		if mine != want {
			t.Errorf("%s: /tmp/mine = %q, want %q (forks share no writes)", id, mine, want)
		}
	}
	snap := cellCLI("snapshot", src, "--name", "counted")
	from, err := c.Create(ctx, client.CreateOptions{Template: snap, Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatalf("create from snapshot %s: %v", snap, err)
	}
	t.Cleanup(func() { _ = c.Kill(ctx, from.SandboxID) })
	if got := strings.TrimSpace(execOut(t, c, from.SandboxID, "cat /tmp/origin; pgrep -c python3")); got != "source\n1" {
		t.Fatalf("sandbox from the snapshot: %q", got)
	}
}

// TestForksShareRAM: forks map their snapshot's memory file instead of each loading a private
// copy of the RAM. The source holds 160 MiB of random bytes in RAM (/dev/shm); four forks read
// all of it (each sees the same bytes), and each QEMU's PSS stays below 160 MiB because those
// pages are shared (with private copies each fork's PSS is ≥ 160 MiB plus its own).
func TestForksShareRAM(t *testing.T) {
	d := newDaemon(t)
	_, c := d.serve(t)
	ctx := context.Background()
	src := createSandbox(t, c, 10*time.Minute)
	t.Cleanup(func() { _ = c.Kill(ctx, src) })
	sum := execOut(t, c, src, `python3 -c "
import os
with open('/dev/shm/r', 'wb') as f:
    for _ in range(160): f.write(os.urandom(1 << 20))" && sha256sum < /dev/shm/r`)
	forks, err := c.Fork(ctx, src, 4, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var pss []float64
	for i, f := range forks {
		if f.Sandbox == nil {
			t.Fatalf("fork %d failed: %+v", i, f.Error)
		}
		id := f.Sandbox.SandboxID
		t.Cleanup(func() { _ = c.Kill(ctx, id) })
		if got := execOut(t, c, id, "sha256sum < /dev/shm/r"); got != sum {
			t.Fatalf("fork %s sees other bytes: %q, source %q", id, got, sum)
		}
	}
	for _, f := range forks {
		pids := qemuProcesses(t, filepath.Join(d.home, "run", f.Sandbox.SandboxID))
		if len(pids) != 1 {
			t.Fatalf("fork %s: QEMU processes %v", f.Sandbox.SandboxID, pids)
		}
		pid, _ := strconv.Atoi(pids[0])
		pss = append(pss, bench.PSSMiB(pid))
	}
	t.Logf("PSS of 4 forks that each read 160 MiB of their source's RAM: %.0f MiB", pss)
	// Measured: ~105 MiB each with the shared file, ~315 MiB each with private copies.
	if med := bench.MedianFloat(pss); med == 0 || med >= 160 {
		t.Fatalf("fork PSS median %.0f MiB: the forks do not share their snapshot's RAM", med)
	}
}

// TestSnapshotsTakeTheDiskByReference: a running sandbox snapshotted again and again, writing
// between snapshots, goes on with all it wrote; each snapshot holds exactly what was written
// before it, also once the source and the older snapshots are gone; the snapshots share the
// disk's layers with the source (hard links, no copy), and the source's chain of layers stays
// short (flattened in the background).
func TestSnapshotsTakeTheDiskByReference(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	src := createSandbox(t, c, 20*time.Minute)
	const rounds = 7
	var snaps []string
	for i := range rounds {
		// 8 MiB of data a round: a disk copied at each snapshot would be noticed by its size.
		execOut(t, c, src, fmt.Sprintf("head -c 8M /dev/urandom > ~/data-%d && sha256sum ~/data-%d | cut -c1-64 > ~/sum-%d && sync", i, i, i))
		sn, err := c.Snapshot(ctx, src, "")
		if err != nil {
			t.Fatalf("round %d: snapshot: %v\n%s", i, err, s.logs)
		}
		snaps = append(snaps, sn.SnapshotID)
	}
	want := execOut(t, c, src, "cat ~/sum-*")
	check := func(id string, n int) {
		t.Helper()
		out := execOut(t, c, id, "cd ~ && ls data-* | wc -l && for f in data-*; do sha256sum $f | cut -c1-64; done | sort && cat sum-* | sort")
		lines := strings.Fields(out)
		if len(lines) != 1+2*n || lines[0] != strconv.Itoa(n) {
			t.Fatalf("%s: want %d files, got %q", id, n, out)
		}
		for j := range n {
			if lines[1+j] != lines[1+n+j] {
				t.Fatalf("%s: file contents do not match their sums: %q", id, out)
			}
		}
	}
	check(src, rounds)
	// The snapshots' disks are the source's layers, linked: one inode for two directories.
	layers, _ := filepath.Glob(filepath.Join(d.home, "templates", "*", "snap", "layer-*.qcow2"))
	shared := 0
	for _, l := range layers {
		if st, err := os.Stat(l); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink > 1 {
				shared++
			}
		}
	}
	if shared == 0 {
		t.Fatalf("no snapshot layer is shared (layers %v): the disks were copied", layers)
	}
	// The source's chain is flattened in the background: its layers go back to a few.
	runDir := filepath.Join(d.home, "run", src)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		l, _ := filepath.Glob(filepath.Join(runDir, "layer-*.qcow2"))
		if len(l) <= 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the source keeps %d layers after %d snapshots: never flattened\n%s", len(l), rounds, s.logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := execOut(t, c, src, "cat ~/sum-*"); got != want {
		t.Fatalf("after the flatten the source reads %q, want %q", got, want)
	}
	// The source goes, and all snapshots but the last two; those still start with their files.
	if err := c.Kill(ctx, src); err != nil {
		t.Fatal(err)
	}
	for _, id := range snaps[:rounds-2] {
		req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, s.url+"/templates/"+id, nil)
		req.Header.Set("X-API-Key", d.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
			t.Fatalf("deleting snapshot %s: %s", id, resp.Status)
		}
	}
	for i := rounds - 2; i < rounds; i++ {
		child, err := c.Create(ctx, client.CreateOptions{Template: snaps[i], Timeout: 5 * time.Minute})
		if err != nil {
			t.Fatalf("create from snapshot %d: %v\n%s", i, err, s.logs)
		}
		check(child.SandboxID, i+1)
		_ = c.Kill(ctx, child.SandboxID)
	}
}

// TestSnapshotOfAResumedSandboxKeepsItsMemory: a resumed sandbox's RAM is its own memory file;
// a snapshot writes the changed pages into it in place and shares it, and from then on the
// file is never written again: the sandbox's next pause and a second snapshot make new files.
// Each snapshot starts with the RAM it was taken with (files in /dev/shm, which lives in RAM).
func TestSnapshotOfAResumedSandboxKeepsItsMemory(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t, "--log-level", "debug")
	ctx := context.Background()
	id := createSandbox(t, c, 10*time.Minute)
	t.Cleanup(func() { _ = c.Kill(ctx, id) })
	execOut(t, c, id, "echo 0 > /dev/shm/mark")
	if err := c.Pause(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx, id, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	var snaps []string
	for i := 1; i <= 2; i++ {
		execOut(t, c, id, fmt.Sprintf("echo %d > /dev/shm/mark && head -c 32M /dev/urandom > /dev/shm/fill-%d", i, i))
		sn, err := c.Snapshot(ctx, id, "")
		if err != nil {
			t.Fatalf("snapshot %d: %v\n%s", i, err, s.logs)
		}
		snaps = append(snaps, sn.SnapshotID)
	}
	execOut(t, c, id, "echo 3 > /dev/shm/mark")
	if err := c.Pause(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx, id, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(execOut(t, c, id, "cat /dev/shm/mark; ls /dev/shm | wc -l")); got != "3\n3" {
		t.Fatalf("the sandbox after its pause: %q, want mark 3 and three files", got)
	}
	for i, sn := range snaps {
		info, err := c.Create(ctx, client.CreateOptions{Template: sn, Timeout: 5 * time.Minute})
		if err != nil {
			t.Fatalf("create from snapshot %d: %v", i+1, err)
		}
		want := fmt.Sprintf("%d\n%d", i+1, i+2)
		if got := strings.TrimSpace(execOut(t, c, info.SandboxID, "cat /dev/shm/mark; ls /dev/shm | wc -l")); got != want {
			t.Fatalf("snapshot %d starts with %q, want mark and file count %q", i+1, got, want)
		}
		_ = c.Kill(ctx, info.SandboxID)
	}
	// The first snapshot wrote into the sandbox's own file; the second found it shared.
	if n := strings.Count(s.logs.String(), `msg="delta save in place"`); n != 1 || !strings.Contains(s.logs.String(), "last=false") {
		t.Fatalf("%d saves in place (want the first snapshot's only):\n%s", n, s.logs)
	}
}
