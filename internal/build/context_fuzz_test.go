package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzPackCopy packs arbitrary src patterns out of a build context that holds links pointing
// out of it: never a panic, never an entry outside the context (absolute, or climbing out),
// never a file from outside, never the ignored path, and the same hash for the same tree,
// written or not.
func FuzzPackCopy(f *testing.F) {
	for _, s := range []string{".", "app", "app/", "*.txt", "**/*.txt", "app/**", "out", "out/x", "in", "../x", "/etc", "a[", "app/*/b", "?pp", ".dockerignore", "**"} {
		f.Add(s)
	}
	outside := f.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("SECRET"), 0o644); err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	for name, content := range map[string]string{"app/a.txt": "a", "app/sub/b.txt": "b", "top.txt": "t", ".dockerignore": "app/ignored\n", "app/ignored": "i"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	for name, target := range map[string]string{"out": outside, "app/secret": filepath.Join(outside, "secret"), "in": "app", "app/up": "../top.txt"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, src string) {
		ctx := context.Background()
		var buf bytes.Buffer
		h1, err := PackCopy(ctx, dir, src, "/dest", &buf)
		if err != nil {
			return
		}
		h2, err := PackCopy(ctx, dir, src, "/dest", nil)
		if err != nil || h1 != h2 {
			t.Fatalf("%q: hash %s written, %s not (%v)", src, h1, h2, err)
		}
		zr, err := gzip.NewReader(&buf)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			hd, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := strings.TrimSuffix(hd.Name, "/")
			if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") || path.Clean(name) != name {
				t.Fatalf("%q: entry %q leaves the context", src, hd.Name)
			}
			if hd.Typeflag == tar.TypeReg {
				b, _ := io.ReadAll(tr)
				if bytes.Contains(b, []byte("SECRET")) {
					t.Fatalf("%q: %s holds a file from outside the context", src, hd.Name)
				}
			}
			// The ignored path itself never goes; the same file reached through the link
			// "in" (to app) is another path, which .dockerignore's patterns do not name.
			if name == "app/ignored" {
				t.Fatalf("%q: %s is in .dockerignore", src, hd.Name)
			}
		}
	})
}
