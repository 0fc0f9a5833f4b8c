package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cellhq/cell/internal/filesum"
	"github.com/cellhq/cell/internal/vmm"
)

// TestLayerDigests: the digests recorded at publish pass for the files as written and fail for
// a changed byte in any of them, a missing file, or a layer without digests.
func TestLayerDigests(t *testing.T) {
	dir := t.TempDir()
	for _, f := range layerFiles(true) {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("content of "+f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	sums, err := sumFiles(ctx, dir, true)
	if err != nil || len(sums) != 3 {
		t.Fatalf("%v %v", sums, err)
	}
	lt := &Template{Dir: dir, sums: sums}
	if err := lt.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"mem", "state", vmm.DiskFile} {
		p := filepath.Join(dir, f)
		orig, _ := os.ReadFile(p)
		bad := append([]byte(nil), orig...)
		bad[0] ^= 1
		if err := os.WriteFile(p, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := lt.Verify(ctx); !errors.Is(err, filesum.ErrMismatch) {
			t.Errorf("%s changed: %v", f, err)
		}
		_ = os.WriteFile(p, orig, 0o600)
	}
	_ = os.Remove(filepath.Join(dir, "mem"))
	if err := lt.Verify(ctx); err == nil {
		t.Error("a missing file passed")
	}
	if err := (&Template{Dir: dir}).Verify(ctx); err == nil {
		t.Error("a layer without digests passed")
	}
}

// TestParseFree: the guest's report of its free disk is read strictly.
func TestParseFree(t *testing.T) {
	for in, want := range map[string]int{
		"262144 4096\n":            1024,
		"0 4096":                   0,
		"18446744073709551615 512": MaxDiskMiB,
	} {
		if got, err := parseFree(in); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "1", "1 2 3", "-1 4096", "10 4095", "10 0", "10 2097152", "x 4096"} {
		if _, err := parseFree(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
