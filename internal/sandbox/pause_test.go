package sandbox

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/vmm"
)

// stagingWith makes a staging generation under dir holding the given files.
func stagingWith(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	st, err := os.MkdirTemp(dir, ".staging-")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(st, name), fileContent(name, content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func pending(t *testing.T, m PausedMeta) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFinishPause(t *testing.T) {
	full := PausedMeta{ID: "sb1", Memory: true, NamedRAM: true, MemoryMiB: 512, CPUs: 2}
	split := PausedMeta{ID: "sb1", Memory: true, NamedRAM: true, RAMFile: true, MemoryMiB: 512, CPUs: 2}
	for _, c := range []struct {
		name       string
		files      map[string]string
		ok, memory bool
	}{
		{"complete", map[string]string{"meta.json": pending(t, full), "state": "s", "disk.qcow2": "d"}, true, true},
		{"disk and state, meta pending", map[string]string{"meta.pending": pending(t, full), "state": "s", "disk.qcow2": "d"}, true, true},
		{"disk without state", map[string]string{"meta.pending": pending(t, full), "disk.qcow2": "d"}, true, false},
		{"disk only", map[string]string{"disk.qcow2": "d", "state": "partial"}, true, false},
		{"pending meta of another sandbox", map[string]string{"meta.pending": pending(t, PausedMeta{ID: "other", Memory: true}), "state": "s", "disk.qcow2": "d"}, true, false},
		{"nothing taken yet", map[string]string{"meta.pending": pending(t, full), "state": "partial"}, false, false},
		{"RAM file, state and disk", map[string]string{"meta.pending": pending(t, split), "state": "s", "mem": "m", "disk.qcow2": "d"}, true, true},
		{"RAM file missing", map[string]string{"meta.pending": pending(t, split), "state": "s", "disk.qcow2": "d"}, true, false},
	} {
		dir := t.TempDir()
		stagingWith(t, dir, c.files)
		ok, err := FinishPause(dir, "sb1", 512, 2)
		if err != nil || ok != c.ok {
			t.Fatalf("%s: FinishPause = %v, %v; want %v", c.name, ok, err, c.ok)
		}
		if !ok {
			continue
		}
		g, meta, err := CurrentPaused(dir)
		if err != nil {
			t.Fatalf("%s: no current generation: %v", c.name, err)
		}
		if meta.ID != "sb1" || meta.Memory != c.memory || meta.MemoryMiB != 512 {
			t.Fatalf("%s: meta %+v", c.name, meta)
		}
		if _, err := os.Stat(filepath.Join(g, "state")); (err == nil) != c.memory {
			t.Fatalf("%s: state file present = %v, memory %v", c.name, err == nil, c.memory)
		}
		if _, err := os.Stat(filepath.Join(g, "mem")); err == nil && !meta.RAMFile {
			t.Fatalf("%s: a memory file left in a generation that does not use it", c.name)
		}
		if meta.RAMFile && !c.memory {
			t.Fatalf("%s: meta says the RAM is in a file, but memory was dropped", c.name)
		}
	}
}

func TestUndoPause(t *testing.T) {
	dir, vm := t.TempDir(), t.TempDir()
	disk := filepath.Join(vm, "disk.qcow2")
	stagingWith(t, dir, map[string]string{"meta.json": "{}", "disk.qcow2": "finished"}) // complete: not undone
	if UndoPause(dir, disk) {
		t.Fatal("a complete generation was undone")
	}
	st := stagingWith(t, dir, map[string]string{"meta.pending": "{}", "disk.qcow2": "mine"})
	if !UndoPause(dir, disk) {
		t.Fatal("the disk was not given back")
	}
	if b, _ := os.ReadFile(disk); string(b) != string(fileContent(vmm.DiskFile, "mine")) {
		t.Fatalf("VM disk %q", b)
	}
	if _, err := os.Stat(st); !os.IsNotExist(err) {
		t.Fatal("the undone staging generation is still there")
	}
}

// RecoverPause's outcome for each state a crash can leave a pause in, and what it leaves on disk:
// the VM's disk (back, or still there) or a complete generation.
func TestRecoverPause(t *testing.T) {
	meta := PausedMeta{ID: "sb1", Memory: true, NamedRAM: true, MemoryMiB: 512, CPUs: 2}
	for _, c := range []struct {
		name           string
		vmHasDisk      bool
		noPausedDir    bool
		alive          bool
		staging        map[string]string
		want           PauseRecovery
		diskBack, done bool
	}{
		{name: "the VM still has its disk", vmHasDisk: true, alive: true, staging: map[string]string{"meta.pending": pending(t, meta), "state": "partial"}, want: NoPauseTook, diskBack: true},
		{name: "no paused directory", noPausedDir: true, alive: true, want: NoPauseTook},
		{name: "taken from a live VM before the end", alive: true, staging: map[string]string{"meta.pending": pending(t, meta), "state": "s", "disk.qcow2": "d"}, want: PauseUndone, diskBack: true},
		{name: "taken from a VM that died", staging: map[string]string{"meta.pending": pending(t, meta), "state": "s", "disk.qcow2": "d"}, want: PauseFinished, done: true},
		{name: "complete, the VM alive", alive: true, staging: map[string]string{"meta.json": pending(t, meta), "state": "s", "disk.qcow2": "d"}, want: PauseFinished, done: true},
		{name: "the disk nowhere", staging: map[string]string{"meta.pending": pending(t, meta), "state": "partial"}, want: PauseUnrecoverable},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, vm := filepath.Join(t.TempDir(), "sb1"), t.TempDir()
			disk := filepath.Join(vm, vmm.DiskFile)
			if c.vmHasDisk {
				if err := os.WriteFile(disk, fileContent(vmm.DiskFile, "vm"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if !c.noPausedDir {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				stagingWith(t, dir, c.staging)
			}
			got, err := RecoverPause(dir, disk, c.alive, "sb1", 512, 2)
			if err != nil || got != c.want {
				t.Fatalf("RecoverPause = %v, %v; want %v", got, err, c.want)
			}
			if _, err := os.Stat(disk); (err == nil) != c.diskBack {
				t.Errorf("the VM has a disk: %v, want %v", err == nil, c.diskBack)
			}
			if _, _, err := CurrentPaused(dir); (err == nil) != c.done {
				t.Errorf("a complete generation: %v (%v), want %v", err == nil, err, c.done)
			}
		})
	}
}

// fileContent is what a test writes to file name to stand for content: a disk is a qcow2 file
// (a header without a backing file, then content).
func fileContent(name, content string) []byte {
	if name != vmm.DiskFile {
		return []byte(content)
	}
	return append([]byte("QFI\xfb\x00\x00\x00\x03"+strings.Repeat("\x00", 12)), content...)
}

// generationWith makes the generation dir/name holding files.
func generationWith(t *testing.T, dir, name string, files map[string]string) {
	t.Helper()
	g := filepath.Join(dir, name)
	if err := os.Mkdir(g, 0o700); err != nil {
		t.Fatal(err)
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(g, f), fileContent(f, content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Each state a crash can leave a paused sandbox's directory in: the newest complete generation
// is the sandbox, whatever "current" says; CleanPaused keeps only it and names it current.
func TestCurrentPausedCrashPoints(t *testing.T) {
	full := PausedMeta{ID: "sb1", Memory: true, NamedRAM: true, RAMFile: true, MemoryMiB: 512, CPUs: 2}
	diskOnly := PausedMeta{ID: "sb1", MemoryMiB: 512, CPUs: 2}
	done := map[string]string{"meta.json": pending(t, full), "state": "s", "mem": "m", "disk.qcow2": "d"}
	doneDisk := map[string]string{"meta.json": pending(t, diskOnly), "disk.qcow2": "d"}
	for _, c := range []struct {
		name    string
		gens    map[string]map[string]string
		current string // "" for none
		staging map[string]string
		want    string // "" for none
	}{
		{"published", map[string]map[string]string{"g100": done}, "g100", nil, "g100"},
		{"renamed, not yet named current", map[string]map[string]string{"g100": done}, "", nil, "g100"},
		{"renamed, current names the previous", map[string]map[string]string{"g50": doneDisk, "g100": done}, "g50", nil, "g100"},
		{"current names a generation that is gone", map[string]map[string]string{"g50": done}, "g70", nil, "g50"},
		{"newer one without meta.json", map[string]map[string]string{"g50": done,
			"g100": {"meta.pending": pending(t, full), "state": "s", "mem": "m", "disk.qcow2": "d"}}, "g50", nil, "g50"},
		{"newer one without its disk", map[string]map[string]string{"g50": done,
			"g100": {"meta.json": pending(t, full), "state": "s", "mem": "m"}}, "g50", nil, "g50"},
		{"newer one without its memory", map[string]map[string]string{"g50": done,
			"g100": {"meta.json": pending(t, full), "state": "s", "disk.qcow2": "d"}}, "g50", nil, "g50"},
		{"newer one with a torn meta.json", map[string]map[string]string{"g50": done,
			"g100": {"meta.json": `{"id": "sb1", "mem`, "disk.qcow2": "d"}}, "g50", nil, "g50"},
		{"numbers, not names, are compared", map[string]map[string]string{"g9": doneDisk, "g10": done}, "g9", nil, "g10"},
		{"staging only", nil, "", done, ""},
		{"staging beside the published one", map[string]map[string]string{"g100": done}, "g100",
			map[string]string{"meta.pending": pending(t, full), "state": "partial"}, "g100"},
		{"not a generation", map[string]map[string]string{"gx1": done, "g-1": done}, "", nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, files := range c.gens {
				generationWith(t, dir, name, files)
			}
			if c.current != "" {
				if err := os.WriteFile(filepath.Join(dir, "current"), []byte(c.current), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if c.staging != nil {
				stagingWith(t, dir, c.staging)
			}
			g, meta, err := CurrentPaused(dir)
			if c.want == "" {
				if !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("CurrentPaused = %q, %v; want none (ErrNotExist)", g, err)
				}
				CleanPaused(dir) // without a complete generation, everything stays for inspection
				if des, _ := os.ReadDir(dir); len(des) != len(c.gens)+btoi(c.staging != nil)+btoi(c.current != "") {
					t.Fatalf("CleanPaused removed something: %d entries left", len(des))
				}
				return
			}
			if err != nil || g != filepath.Join(dir, c.want) || meta.ID != "sb1" {
				t.Fatalf("CurrentPaused = %q, %+v, %v; want %s", g, meta, err, c.want)
			}
			CleanPaused(dir)
			des, _ := os.ReadDir(dir)
			var left []string
			for _, de := range des {
				left = append(left, de.Name())
			}
			if len(left) != 2 || left[0] != "current" || left[1] != c.want {
				t.Fatalf("after CleanPaused: %v; want [current %s]", left, c.want)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "current")); string(b) != c.want {
				t.Fatalf("current names %q, want %s", b, c.want)
			}
		})
	}
	if _, _, err := CurrentPaused(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no directory: %v", err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A crash after the new generation was renamed into place but before "current" named it: the
// recovery (FinishPause, for a VM that lost its disk to the pause) finds it, and it is the sandbox.
func TestFinishPauseAfterRename(t *testing.T) {
	dir := t.TempDir()
	full := PausedMeta{ID: "sb1", Memory: true, NamedRAM: true, RAMFile: true, MemoryMiB: 512, CPUs: 2}
	generationWith(t, dir, "g100", map[string]string{"meta.json": pending(t, full), "state": "s", "mem": "m", "disk.qcow2": "d"})
	ok, err := FinishPause(dir, "sb1", 512, 2)
	if err != nil || !ok {
		t.Fatalf("FinishPause = %v, %v", ok, err)
	}
	g, meta, err := CurrentPaused(dir)
	if err != nil || filepath.Base(g) != "g100" || !meta.Memory {
		t.Fatalf("CurrentPaused = %q, %+v, %v", g, meta, err)
	}
}

// A new generation is newer than every one there, even if the clock went back.
func TestPublishAfterEveryGeneration(t *testing.T) {
	dir := t.TempDir()
	future := time.Now().Add(time.Hour).UnixNano()
	old := "g" + strconv.FormatInt(future, 10)
	diskOnly := PausedMeta{ID: "sb1", MemoryMiB: 512, CPUs: 2}
	generationWith(t, dir, old, map[string]string{"meta.json": pending(t, diskOnly), "disk.qcow2": "old"})
	st := stagingWith(t, dir, map[string]string{"meta.json": pending(t, diskOnly), "disk.qcow2": "new"})
	if err := publish(slog.New(slog.DiscardHandler), &staged{parent: dir, dir: st}); err != nil {
		t.Fatal(err)
	}
	g, _, err := CurrentPaused(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(g, "disk.qcow2")); string(b) != string(fileContent(vmm.DiskFile, "new")) {
		t.Fatalf("the current generation %s is not the one just published", g)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "current")); string(b) != filepath.Base(g) {
		t.Fatalf("current names %q, want %s", b, filepath.Base(g))
	}
}

// TestGenerationMissingALayerIsIncomplete: a generation's disk is a chain of layers linked into
// it; one whose chain lacks a layer (a crash between the links and the publication could not
// make one, but a hand or a full disk can) is not the sandbox: the previous one is.
func TestGenerationMissingALayerIsIncomplete(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal("qemu-img is required (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	diskOnly := PausedMeta{ID: "sb1"}
	generationWith(t, dir, "g50", map[string]string{"meta.json": pending(t, diskOnly), "disk.qcow2": "d"})
	generationWith(t, dir, "g100", map[string]string{"meta.json": pending(t, diskOnly)})
	layer := "layer-00000000000000aa.qcow2"
	top := filepath.Join(dir, "g100", vmm.DiskFile)
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", filepath.Join(dir, "g100", layer), "1M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", layer, top).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if g, _, err := CurrentPaused(dir); err != nil || filepath.Base(g) != "g100" {
		t.Fatalf("with its layer: %s, %v; want g100", g, err)
	}
	if err := os.Remove(filepath.Join(dir, "g100", layer)); err != nil {
		t.Fatal(err)
	}
	if g, _, err := CurrentPaused(dir); err != nil || filepath.Base(g) != "g50" {
		t.Fatalf("without its layer: %s, %v; want g50", g, err)
	}
}
