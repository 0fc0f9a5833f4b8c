package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cellhq/cell/internal/ids"
)

func TestWorkDir(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	w, err := NewWorkDir(run, "abc123")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(w.Path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("mode %v, want 0700", st.Mode().Perm())
	}
	if _, err := NewWorkDir(run, "abc123"); err == nil {
		t.Fatal("second NewWorkDir with the same id succeeded")
	}
	if err := os.WriteFile(w.File("disk.qcow2"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := w.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := os.Stat(w.Path); !os.IsNotExist(err) {
		t.Fatalf("directory still there: %v", err)
	}
}

func TestWorkDirRejects(t *testing.T) {
	base := t.TempDir()
	for _, id := range []string{"../x", "a/b", "", ".."} {
		if _, err := NewWorkDir(base, id); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
	if _, err := NewWorkDir("relative", "abc"); err == nil {
		t.Error("relative run dir accepted")
	}
	long := filepath.Join(base, strings.Repeat("d", 100))
	if _, err := NewWorkDir(long, "abc"); err == nil || !strings.Contains(err.Error(), "socket") {
		t.Errorf("long run dir: %v", err)
	}
}

func TestWorkDirConcurrentCreateOneWins(t *testing.T) {
	run := t.TempDir()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := NewWorkDir(run, "same"); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d creators won, want 1", wins)
	}
}

// TestWorkDirMoveAside: a directory moved aside keeps its files under a name no VM id can have,
// and the id is free for a new directory at once.
func TestWorkDirMoveAside(t *testing.T) {
	run := t.TempDir()
	w, err := NewWorkDir(run, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.File("ram"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	aside, err := w.MoveAside()
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(aside.Path)
	if !IsGoneDir(name) || IsGoneDir("sb1") || ids.Validate("vm id", name) == nil {
		t.Fatalf("moved aside as %q", name)
	}
	if b, err := os.ReadFile(aside.File("ram")); err != nil || string(b) != "x" {
		t.Fatalf("the files did not move along: %q %v", b, err)
	}
	w2, err := NewWorkDir(run, "sb1")
	if err != nil {
		t.Fatalf("the id is not free after MoveAside: %v", err)
	}
	if err := aside.Remove(); err != nil {
		t.Fatal(err)
	}
	if des, _ := os.ReadDir(run); len(des) != 1 || des[0].Name() != filepath.Base(w2.Path) {
		t.Fatalf("run dir holds %v", des)
	}
}
