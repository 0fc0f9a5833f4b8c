package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/bench"
	"github.com/cellhq/cell/pkg/client"
)

// TestFreedMemoryGoesBack: memory a sandbox frees (a dropped page cache) goes back to the host
// (free page reporting): QEMU's private memory shrinks by most of it within seconds, the next
// pause saves less, and the template's memory file that every clone maps is not touched (our
// QEMU discards a clone's pages from its own mapping only).
func TestFreedMemoryGoesBack(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	id := createSandbox(t, c, 10*time.Minute)
	t.Cleanup(func() { _ = c.Kill(ctx, id) })
	pids := qemuProcesses(t, filepath.Join(d.home, "run", id))
	if len(pids) != 1 {
		t.Fatalf("QEMU processes %v", pids)
	}
	pid, _ := strconv.Atoi(pids[0])
	// The template's memory file, as this clone's QEMU maps it (mem-path=…).
	cmdline, err := os.ReadFile("/proc/" + pids[0] + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	_, mem, ok := strings.Cut(string(cmdline), "mem-path=")
	mem, _, _ = strings.Cut(mem, ",")
	if !ok || !strings.HasSuffix(mem, "/mem") {
		t.Fatalf("the clone's QEMU maps no template memory file: %q", cmdline)
	}
	blocks := func() int64 {
		st, err := os.Stat(mem)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Blocks
	}
	before := blocks()
	anon := func() float64 { return bench.AnonymousMiB(pid) }
	execOut(t, c, id, "head -c 200M /dev/urandom > ~/big && sync")
	full := anon()
	if full < 200 {
		t.Fatalf("QEMU holds %.0f MiB of its own after 200 MB went through the page cache", full)
	}
	execOut(t, c, id, "rm ~/big && sync && echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null")
	deadline := time.Now().Add(30 * time.Second)
	for anon() > full-150 {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU still holds %.0f of %.0f MiB 30 s after the guest dropped 200 MB of page cache: free pages are not reported\n%s", anon(), full, s.logs)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("QEMU's own memory: %.0f MiB with 200 MB of page cache, %.0f MiB after the guest dropped it", full, anon())
	if after := blocks(); after != before {
		t.Fatalf("the template's memory file changed: %d blocks, %d before", after, before)
	}
	// Paused beside a sandbox that never wrote: the dropped cache is not in the saved RAM.
	clean, err := c.Create(ctx, client.CreateOptions{Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Kill(ctx, clean.SandboxID) })
	execOut(t, c, clean.SandboxID, "true")
	savedMiB := func(id string) float64 {
		t.Helper()
		if err := c.Pause(ctx, id, true); err != nil {
			t.Fatal(err)
		}
		gens, _ := filepath.Glob(filepath.Join(d.home, "paused", id, "g*", "mem"))
		if len(gens) != 1 {
			t.Fatalf("paused memory files %v", gens)
		}
		st, err := os.Stat(gens[0])
		if err != nil {
			t.Fatal(err)
		}
		return float64(st.Sys().(*syscall.Stat_t).Blocks*512) / (1 << 20)
	}
	saved, savedClean := savedMiB(id), savedMiB(clean.SandboxID)
	t.Logf("the pause saved %.0f MiB of RAM, %.0f MiB for a sandbox that never wrote", saved, savedClean)
	if saved > savedClean+80 {
		t.Fatalf("the pause saved %.0f MiB, %.0f more than a clean sandbox's: the dropped page cache was saved", saved, saved-savedClean)
	}
	if err := c.Resume(ctx, id, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	execOut(t, c, id, "test ! -e ~/big && echo ok")
}
