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
