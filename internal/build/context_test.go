package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// tfile is a file of a test context: a regular file, a directory (dir) or a symlink (link).
type tfile struct {
	path, body, link string
	dir              bool
	mode             os.FileMode
}

func writeTree(t *testing.T, dir string, files []tfile) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case f.dir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case f.link != "":
			if err := os.Symlink(f.link, p); err != nil {
				t.Fatal(err)
			}
			continue
		default:
			if err := os.WriteFile(p, []byte(f.body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if f.mode != 0 {
			if err := os.Chmod(p, f.mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// entry is a tar entry as a test sees it.
type entry struct {
	name string
	typ  byte
	mode int64
	link string
	body string
}

func pack(t *testing.T, dir, src, dest string) (string, []entry) {
	t.Helper()
	var buf bytes.Buffer
	h, err := PackCopy(context.Background(), dir, src, dest, &buf)
	if err != nil {
		t.Fatalf("PackCopy(%q): %v", src, err)
	}
	if len(h) != FilesHashN || !isHash(h) {
		t.Fatalf("hash %q", h)
	}
	hashOnly, err := PackCopy(context.Background(), dir, src, dest, nil)
	if err != nil || hashOnly != h {
		t.Fatalf("hash without a tar: %q, %v; with: %q", hashOnly, err, h)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var ents []entry
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" || !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d %q %q mtime %v", hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname, hdr.ModTime)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		ents = append(ents, entry{hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Linkname, string(b)})
	}
	return h, ents
}

// sampleTree is a context with files, dot files, modes, an empty directory, and symlinks in
// it and out of it.
func sampleTree() []tfile {
	return []tfile{
		{path: "app/main.py", body: "print(1)\n"},
		{path: "app/run.sh", body: "#!/bin/sh\n", mode: 0o755},
		{path: "app/.env", body: "A=1\n"},
		{path: "app/lib/util.py", body: "x = 1\n"},
		{path: "app/lib-extra/x", body: "x"},
		{path: "app/current", link: "lib"},
		{path: "app/out", link: "../../etc"},
		{path: "app/empty", dir: true, mode: 0o700},
		{path: "README.md", body: "# hi\n"},
		{path: "notes.txt", body: "n"},
		{path: "docs/a.txt", body: "a"},
	}
}

func TestPackCopyLayout(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, sampleTree())
	_, ents := pack(t, dir, "app/", "/app")
	want := []entry{
		{"app/", tar.TypeDir, 0o755, "", ""},
		{"app/.env", tar.TypeReg, 0o644, "", "A=1\n"},
		{"app/current", tar.TypeSymlink, 0o777, "lib", ""},
		{"app/empty/", tar.TypeDir, 0o700, "", ""},
		// Sorted by path as the SDK sorts, without the directories' / ("app/lib" sorts first).
		{"app/lib/", tar.TypeDir, 0o755, "", ""},
		{"app/lib-extra/", tar.TypeDir, 0o755, "", ""},
		{"app/lib-extra/x", tar.TypeReg, 0o644, "", "x"},
		{"app/lib/util.py", tar.TypeReg, 0o644, "", "x = 1\n"},
		{"app/main.py", tar.TypeReg, 0o644, "", "print(1)\n"},
		{"app/out", tar.TypeSymlink, 0o777, "../../etc", ""},
		{"app/run.sh", tar.TypeReg, 0o755, "", "#!/bin/sh\n"},
	}
	if !reflect.DeepEqual(ents, want) {
		t.Errorf("entries:\n got %+v\nwant %+v", ents, want)
	}
}

func TestPackCopyMatches(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, sampleTree())
	names := func(ents []entry) []string {
		var n []string
		for _, e := range ents {
			n = append(n, e.name)
		}
		return n
	}
	tests := []struct {
		src  string
		want []string
	}{
		{"README.md", []string{"README.md"}},
		{"./docs/../README.md", []string{"README.md"}},
		{"*.txt", []string{"notes.txt"}},
		{"*/*.txt", []string{"docs/a.txt"}},
		{"**/*.py", []string{"app/lib/util.py", "app/main.py"}},
		{"app/.e*", []string{"app/.env"}},
		{"app/current", []string{"app/current"}}, // the link itself, not what it points to
		{"app/current/util.py", []string{"app/current/util.py"}},
		{"docs", []string{"docs/", "docs/a.txt"}},
		{"*/a.txt", []string{"docs/a.txt"}}, // README.md and notes.txt are no directories: no match, no error
		{".", []string{"./", ".dockerignore", "README.md", "app/", "app/.env", "app/current", "app/empty/",
			"app/lib/", "app/lib-extra/", "app/lib-extra/x", "app/lib/util.py", "app/main.py", "app/out", "app/run.sh",
			"docs/", "docs/a.txt", "notes.txt"}},
	}
	writeTree(t, dir, []tfile{{path: ".dockerignore", body: "# nothing ignored\n"}})
	for _, tt := range tests {
		_, ents := pack(t, dir, tt.src, "/d/")
		if got := names(ents); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.src, got, tt.want)
		}
	}
	if _, err := PackCopy(context.Background(), dir, "*.nothing", "/d", nil); err == nil || !strings.Contains(err.Error(), "no files") {
		t.Errorf("no match: %v", err)
	}
}

func TestPackCopyDockerignore(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, append(sampleTree(),
		tfile{path: ".dockerignore", body: "# build outputs\n**/*.py\napp/lib-extra\n!app/lib-extra/x\napp/.env\n"},
	))
	_, ents := pack(t, dir, "app", "/app")
	var got []string
	for _, e := range ents {
		got = append(got, e.name)
	}
	want := []string{"app/", "app/current", "app/empty/", "app/lib/", "app/lib-extra/x", "app/out", "app/run.sh"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
}

func TestPackCopyHash(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	writeTree(t, a, sampleTree())
	// The same tree written in the other order, with other mtimes.
	rev := append([]tfile{}, sampleTree()...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	writeTree(t, b, rev)
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(b, "app/main.py"), old, old); err != nil {
		t.Fatal(err)
	}
	ha, ta := packBytes(t, a, "app", "/app")
	hb, tb := packBytes(t, b, "app", "/app")
	if ha != hb || !bytes.Equal(ta, tb) {
		t.Fatalf("the same tree: hashes %s %s, tars equal %v", ha, hb, bytes.Equal(ta, tb))
	}
	seen := map[string]string{ha: "original"}
	change := func(what string, f func(dir string) error) {
		t.Helper()
		d := t.TempDir()
		writeTree(t, d, sampleTree())
		if err := f(d); err != nil {
			t.Fatal(err)
		}
		h, _ := packBytes(t, d, "app", "/app")
		if prev, ok := seen[h]; ok {
			t.Errorf("%s: the same hash as %s", what, prev)
		}
		seen[h] = what
	}
	change("a byte", func(d string) error {
		return os.WriteFile(filepath.Join(d, "app/main.py"), []byte("print(2)\n"), 0o644)
	})
	change("a mode", func(d string) error { return os.Chmod(filepath.Join(d, "app/main.py"), 0o600) })
	change("a name", func(d string) error {
		return os.Rename(filepath.Join(d, "app/main.py"), filepath.Join(d, "app/main2.py"))
	})
	change("a link target", func(d string) error {
		p := filepath.Join(d, "app/current")
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.Symlink("lib-extra", p)
	})
	change("an empty directory", func(d string) error { return os.Mkdir(filepath.Join(d, "app/new"), 0o755) })
	change("a file's type", func(d string) error {
		p := filepath.Join(d, "app/lib-extra/x")
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.Symlink("x", p)
	})
	// The step's dest and src are part of the hash; a file outside src is not.
	if h, _ := packBytes(t, a, "app", "/other"); h == ha {
		t.Error("another dest, the same hash")
	}
	if h, _ := packBytes(t, a, "app/", "/app"); h == ha {
		t.Error("another src, the same hash")
	}
	if err := os.WriteFile(filepath.Join(a, "notes.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if h, _ := packBytes(t, a, "app", "/app"); h != ha {
		t.Error("a file outside src changed the hash")
	}
}

func packBytes(t *testing.T, dir, src, dest string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	h, err := PackCopy(context.Background(), dir, src, dest, &buf)
	if err != nil {
		t.Fatalf("PackCopy: %v", err)
	}
	return h, buf.Bytes()
}

func TestPackCopyRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, []tfile{{path: "secret", body: "s"}})
	dir := t.TempDir()
	writeTree(t, dir, []tfile{
		{path: "a", body: "a"},
		{path: "out", link: outside},
		{path: "outfile", link: filepath.Join(outside, "secret")},
	})
	for src, want := range map[string]string{
		"/etc/passwd": "absolute",
		"..":          "outside the build context",
		"../x":        "outside the build context",
		"a/../../x":   "outside the build context",
		"out/secret":  "escapes",
		"out/*":       "escapes",
		"*/secret":    "escapes",
		"":            "empty",
	} {
		var buf bytes.Buffer
		_, err := PackCopy(context.Background(), dir, src, "/d", &buf)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v (%d bytes packed), want an error with %q", src, err, buf.Len(), want)
		}
	}
	// Links out of the context are stored as links, never followed.
	_, ents := pack(t, dir, "out*", "/d/")
	want := []entry{{"out", tar.TypeSymlink, 0o777, outside, ""}, {"outfile", tar.TypeSymlink, 0o777, filepath.Join(outside, "secret"), ""}}
	if !reflect.DeepEqual(ents, want) {
		t.Errorf("entries %+v, want %+v", ents, want)
	}
	// A .dockerignore pointing out of the context is not read.
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, ".dockerignore")); err != nil {
		t.Fatal(err)
	}
	if _, err := PackCopy(context.Background(), dir, "a", "/a", nil); err == nil {
		t.Error("a .dockerignore outside the context was read")
	}
}

func TestPackCopyCancelled(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, sampleTree())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := PackCopy(ctx, dir, "app", "/app", io.Discard); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
}

func TestHashCopies(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, sampleTree())
	df, err := ParseDockerfile([]byte("FROM base\nCOPY app/ README.md /srv/\nRUN true\nCOPY missing /x\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = df.HashCopies(context.Background(), dir)
	if err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("a missing source: %v", err)
	}
	df.Copies = df.Copies[:2]
	df.Spec.Steps = append(df.Spec.Steps[:5], df.Spec.Steps[6:]...)
	if err := df.HashCopies(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if err := df.Spec.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	h0, h1 := df.Spec.Steps[2].FilesHash, df.Spec.Steps[3].FilesHash
	if want, _ := PackCopy(context.Background(), dir, "README.md", "/srv/", nil); h1 != want || h0 == h1 {
		t.Errorf("hashes %s %s, want the second %s", h0, h1, want)
	}
}

func TestPackCopyBounds(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, []tfile{{path: "small", body: "s"}})
	// A sparse file just over the bound: refused before a byte of it is read.
	f, err := os.Create(filepath.Join(dir, "huge"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxCopyBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	start := time.Now()
	_, err = PackCopy(context.Background(), dir, ".", "/d/", io.Discard)
	if err == nil || !strings.Contains(err.Error(), "over") {
		t.Fatalf("a context over %d bytes: %v", int64(MaxCopyBytes), err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("refusing took %v: the file was read", d)
	}
}

func TestPackCopyLongNames(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("é", 80) + ".txt"
	writeTree(t, dir, []tfile{{path: long, body: "x"}})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, ents := pack(t, dir, ".", "/d/")
	want := []entry{
		{"./", tar.TypeDir, 0o755, "", ""},
		{strings.Repeat("d", 120) + "/", tar.TypeDir, 0o755, "", ""},
		{long, tar.TypeReg, 0o644, "", "x"},
	}
	if !reflect.DeepEqual(ents, want) {
		t.Errorf("entries %+v, want %+v", ents, want)
	}
}
