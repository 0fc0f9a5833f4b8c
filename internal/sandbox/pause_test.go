package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// stagingWith makes a staging generation under dir holding the given files.
func stagingWith(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	st, err := os.MkdirTemp(dir, ".staging-")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(st, name), []byte(content), 0o600); err != nil {
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
	if b, _ := os.ReadFile(disk); string(b) != "mine" {
		t.Fatalf("VM disk %q", b)
	}
	if _, err := os.Stat(st); !os.IsNotExist(err) {
		t.Fatal("the undone staging generation is still there")
	}
}
