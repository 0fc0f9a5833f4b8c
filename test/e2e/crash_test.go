package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/pkg/client"
)

// TestCrashSafety SIGKILLs `cell serve` at 24 (CELL_CRASH_ROUNDS) random points during pauses,
// resumes and snapshots. After each restart every sandbox is running or paused (resumable), with
// its disk and memory as they were; no QEMU, VM directory or half-written state is left over.
func TestCrashSafety(t *testing.T) {
	rounds := 24
	if s := os.Getenv("CELL_CRASH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CELL_CRASH_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	d := newDaemon(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	srv, c := d.serve(t)
	ctx := context.Background()
	marks := map[string]string{}
	var ids []string
	for i := 0; i < 2; i++ {
		info, err := c.Create(ctx, client.CreateOptions{Timeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		id := info.SandboxID
		ids = append(ids, id)
		marks[id] = fmt.Sprintf("mark-%d-%d", i, rng.Uint32())
		execOut(t, c, id, "echo "+marks[id]+" > /tmp/mem; echo "+marks[id]+" > /home/user/disk; sync")
	}
	maxDelay := map[string]int{"pause": 2500, "resume": 1200, "snapshot": 2500}
	for i := 0; i < rounds; i++ {
		id := ids[i%2]
		info, err := c.Get(ctx, id)
		if err != nil {
			t.Fatalf("round %d: %s: %v\n%s", i, id, err, srv.logs)
		}
		op := "resume"
		if info.State == "running" {
			op = []string{"pause", "snapshot"}[rng.IntN(2)]
		}
		done := make(chan error, 1)
		go func() {
			var err error
			switch op {
			case "pause":
				err = c.Pause(ctx, id, true)
			case "resume":
				err = c.Resume(ctx, id, time.Hour)
			case "snapshot":
				_, err = c.Snapshot(ctx, id, "")
			}
			done <- err
		}()
		delay := time.Duration(rng.IntN(maxDelay[op])) * time.Millisecond
		time.Sleep(delay)
		_ = srv.cmd.Process.Signal(syscall.SIGKILL)
		_ = srv.cmd.Wait()
		<-done
		t.Logf("round %d: %s of %s killed after %v", i, op, id, delay)

		srv, c = d.serve(t)
		for _, line := range strings.Split(srv.logs.String(), "\n") {
			if strings.Contains(line, "level=WARN") {
				t.Logf("  recovery: %s", line[strings.Index(line, "msg="):])
			}
		}
		running := map[string]bool{}
		for _, sid := range ids {
			info, err := c.Get(ctx, sid)
			if err != nil {
				t.Fatalf("round %d (%s of %s after %v): %s is gone: %v\n%s", i, op, id, delay, sid, err, srv.logs)
			}
			switch info.State {
			case "running":
				running[sid] = true
				if got := execOut(t, c, sid, "cat /tmp/mem /home/user/disk"); got != marks[sid]+"\n"+marks[sid]+"\n" {
					t.Fatalf("round %d: %s lost its state: %q", i, sid, got)
				}
			case "paused":
			default:
				t.Fatalf("round %d: %s is %s", i, sid, info.State)
			}
		}
		checkNoLeftovers(t, d.home, running)
	}
	// Everything paused can still be resumed, with its data.
	for _, id := range ids {
		if err := c.Resume(ctx, id, time.Hour); err != nil {
			t.Fatalf("final resume of %s: %v", id, err)
		}
		if got := execOut(t, c, id, "cat /tmp/mem /home/user/disk"); got != marks[id]+"\n"+marks[id]+"\n" {
			t.Fatalf("%s after the last resume: %q", id, got)
		}
	}
}

// checkNoLeftovers: QEMUs and VM directories only for running sandboxes, no staging directory
// of a pause or a snapshot.
func checkNoLeftovers(t *testing.T, home string, running map[string]bool) {
	t.Helper()
	runDir := filepath.Join(home, "run")
	ents, _ := os.ReadDir(runDir)
	for _, e := range ents {
		if !running[e.Name()] && e.Name() != "daemon.lock" { // the daemon's lock on its run directory
			t.Fatalf("VM directory of %s left in %s (running: %v)", e.Name(), runDir, running)
		}
	}
	if n := len(qemuProcesses(t, runDir)); n != len(running) {
		t.Fatalf("%d QEMU processes for %d running sandboxes", n, len(running))
	}
	_ = filepath.WalkDir(home, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".staging-") {
			t.Fatalf("half-written state left: %s", p)
		}
		return nil
	})
}

// TestCrashMidMigration SIGKILLs `cell serve` while a snapshot's or a pause's RAM is being
// written: the VM is stopped for the save. The restarted daemon must find it stopped and
// continue it, with nothing of the save left running under it. (The daemon writes the RAM, from
// QEMU's mapping or through the migration stream, so its death ends the save; a save QEMU writes
// itself, as for VMs whose RAM is not a named backend, would outlive the daemon, and adoption
// cancels it before continuing.)
func TestCrashMidMigration(t *testing.T) {
	for _, op := range []string{"snapshot", "pause", "pause-in-place"} {
		t.Run(op, func(t *testing.T) {
			d := newDaemon(t)
			srv, c := d.serve(t)
			ctx := context.Background()
			info, err := c.Create(ctx, client.CreateOptions{Timeout: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			id := info.SandboxID
			if op == "pause-in-place" {
				// Resumed from its own generation, the sandbox's next pause writes into the
				// memory file its VM maps (run/<id>/ram) instead of a new one.
				if err := c.Pause(ctx, id, true); err != nil {
					t.Fatal(err)
				}
				if err := c.Resume(ctx, id, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			// 200 MB of random bytes in RAM: a full save takes long enough to be caught.
			execOut(t, c, id, "echo m > /tmp/mem; echo d > /home/user/disk; sync; "+
				"python3 -c \"import os; open('/dev/shm/fill','wb').write(os.urandom(200<<20))\"; "+
				"sha256sum < /dev/shm/fill | cut -c1-16 > /tmp/fill.sum")
			pattern := filepath.Join(d.home, "templates", "*", ".staging-*", "mem")
			if op == "pause" {
				pattern = filepath.Join(d.home, "paused", id, ".staging-*", "mem")
			}
			ram := filepath.Join(d.home, "run", id, "ram")
			var before time.Time
			if op == "pause-in-place" {
				st, err := os.Stat(ram)
				if err != nil {
					t.Fatalf("the resumed VM has no memory file of its own: %v", err)
				}
				before = st.ModTime()
			}
			done := make(chan error, 1)
			go func() {
				var err error
				if op != "snapshot" {
					err = c.Pause(ctx, id, true)
				} else {
					_, err = c.Snapshot(ctx, id, "")
				}
				done <- err
			}()
			deadline := time.Now().Add(30 * time.Second)
			for {
				if op == "pause-in-place" {
					if st, err := os.Stat(ram); err == nil && st.ModTime().After(before) {
						break
					}
				} else if m, _ := filepath.Glob(pattern); len(m) == 1 {
					// Allocated blocks, not the size (the file is sized before it is written).
					if st, err := os.Stat(m[0]); err == nil && st.Sys().(*syscall.Stat_t).Blocks > 0 {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no memory file was being written (%s)\n%s", pattern, srv.logs)
				}
				time.Sleep(2 * time.Millisecond)
			}
			_ = srv.cmd.Process.Signal(syscall.SIGKILL)
			_ = srv.cmd.Wait()
			<-done

			srv, c = d.serve(t)
			info, err = c.Get(ctx, id)
			if err != nil || info.State != "running" {
				t.Fatalf("after restart: %+v %v\n%s", info, err, srv.logs)
			}
			if got := execOut(t, c, id, "cat /tmp/mem /home/user/disk"); got != "m\nd\n" {
				t.Fatalf("state lost: %q", got)
			}
			// Still running a moment later (a save completing under it would have stopped it).
			time.Sleep(2 * time.Second)
			if got := execOut(t, c, id, "cat /tmp/mem"); got != "m\n" {
				t.Fatalf("state lost: %q", got)
			}
			checkNoLeftovers(t, d.home, map[string]bool{id: true})
			if !strings.Contains(srv.logs.String(), "adopted VM was stopped") {
				t.Fatalf("the save had finished before the kill: nothing tested\n%s", srv.logs)
			}
			if op == "pause-in-place" {
				// The adopted VM pauses in place too, and its memory comes back whole.
				if err := c.Pause(ctx, id, true); err != nil {
					t.Fatalf("pause after the restart: %v\n%s", err, srv.logs)
				}
				if err := c.Resume(ctx, id, time.Hour); err != nil {
					t.Fatalf("resume after the restart: %v\n%s", err, srv.logs)
				}
				if got := execOut(t, c, id, "cat /tmp/mem; sha256sum < /dev/shm/fill | cut -c1-16; cat /tmp/fill.sum"); !strings.HasPrefix(got, "m\n") || len(strings.Split(got, "\n")) != 4 || strings.Split(got, "\n")[1] != strings.Split(got, "\n")[2] {
					t.Fatalf("state lost: %q", got)
				}
				if strings.Contains(srv.logs.String(), "through the migration stream instead") {
					t.Fatalf("the adopted VM's pause fell back to the migration stream:\n%s", srv.logs)
				}
			}
		})
	}
}
