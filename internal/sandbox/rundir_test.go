package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Two data directories whose paths are too long for home/run never share a run directory (each
// would take the other's VMs for orphans).
func TestRunDirFallbackIsPerHome(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	long := strings.Repeat("d", 80)
	a, err := RunDir(filepath.Join("/srv", long, "a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := RunDir(filepath.Join("/srv", long, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatalf("both homes run in %s", a)
	}
	again, err := RunDir(filepath.Join("/srv", long, "a"))
	if err != nil || again != a {
		t.Fatalf("the same home: %s %v, want %s", again, err, a)
	}
	for _, d := range []string{a, b, filepath.Dir(a)} {
		st, err := os.Lstat(d)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v", d, st.Mode(), err)
		}
	}
	if short, _ := RunDir("/srv/x"); short != "/srv/x/run" {
		t.Errorf("a short home: %s", short)
	}
	// A run directory someone else made world-writable is refused.
	if err := os.Chmod(b, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := RunDir(filepath.Join("/srv", long, "b")); err == nil {
		t.Error("a world-writable run directory was accepted")
	}
}
