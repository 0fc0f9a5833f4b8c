package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cellhq/cell/internal/netstack"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
}

func tarOf(t testing.TB, es ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			Size: int64(len(e.body)), ModTime: time.Unix(1_700_000_000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func layer(t testing.TB, es ...entry) v1.Layer {
	t.Helper()
	data := tarOf(t, es...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage has two layers: the second deletes a file and a directory's contents of the first,
// replaces a file, and adds links.
func testImage(t testing.TB) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image,
		layer(t,
			entry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\n"},
			entry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "bin/su", body: "su", mode: 0o4755},
			entry{name: "gone.txt", body: "deleted above"},
			entry{name: "opaque/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "opaque/old", body: "hidden above"},
			entry{name: "dev/null", typ: tar.TypeChar},
			entry{name: "app/owned", body: "x", uid: 1234, gid: 4321},
		),
		layer(t,
			entry{name: ".wh.gone.txt"},
			entry{name: "opaque/.wh..wh..opq"},
			entry{name: "opaque/new", body: "kept"},
			entry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n"},
			entry{name: "bin/sh-link", typ: tar.TypeSymlink, link: "su"},
			entry{name: "bin/su-hard", typ: tar.TypeLink, link: "bin/su"},
		))
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/usr/bin:/bin", "GREETING=hi"}, WorkingDir: "/app"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// serveRegistry starts a registry on the loopback holding img as repo:tag.
func serveRegistry(t testing.TB, repo string, img v1.Image) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return host
}

func TestPullThroughMirrorAndUnpack(t *testing.T) {
	host := serveRegistry(t, "library/app:1", testImage(t))
	p, err := NewPuller([]string{"docker.io=http://" + host}, &netstack.Guard{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	img, err := p.Resolve(ctx, "app:1", nil) // docker.io/library/app:1, from the mirror
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(img.Digest, "sha256:") || !strings.Contains(img.Source, host) {
		t.Fatalf("resolved %+v", img)
	}
	if img.Config.WorkingDir != "/app" || len(img.Config.Env) != 2 {
		t.Fatalf("config %+v", img.Config)
	}
	again, err := p.Resolve(ctx, "docker.io/library/app@"+img.Digest, nil)
	if err != nil || again.Digest != img.Digest {
		t.Fatalf("by digest: %v %+v", err, again)
	}
	dir := t.TempDir()
	st, err := Unpack(ctx, img, dir, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 1 {
		t.Errorf("skipped %d entries, want 1 (the device node)", st.Skipped)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	if got := read("etc/passwd"); !strings.Contains(got, "node:x:1000") {
		t.Errorf("etc/passwd = %q, want the upper layer's", got)
	}
	if got := read("opaque/new"); got != "kept" {
		t.Errorf("opaque/new = %q", got)
	}
	for _, gone := range []string{"gone.txt", "opaque/old", "dev/null"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want it absent", gone, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh-link")); err != nil || l != "su" {
		t.Errorf("bin/sh-link -> %q, %v", l, err)
	}
	a, _ := os.Stat(filepath.Join(dir, "bin/su"))
	b, _ := os.Stat(filepath.Join(dir, "bin/su-hard"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("bin/su-hard is not a hard link of bin/su")
	}
	if a != nil && a.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("bin/su lost its set-user-ID bit: %v", a.Mode())
	}
	if fi, err := os.Stat(filepath.Join(dir, "app/owned")); err != nil {
		t.Error(err)
	} else if s := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (s.Uid != 1234 || s.Gid != 4321) {
		t.Errorf("app/owned is %d:%d, want 1234:4321", s.Uid, s.Gid)
	}
}

func TestRegistryOnAPrivateAddressIsRefused(t *testing.T) {
	host := serveRegistry(t, "app:1", testImage(t))
	p, err := NewPuller(nil, &netstack.Guard{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.Resolve(context.Background(), host+"/app:1", nil)
	if err == nil || !strings.Contains(err.Error(), "not reachable for builds") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("pulling from %s: %v, want a refusal naming the loopback", host, err)
	}
	// An operator's exemption opens it.
	p2, err := NewPuller(nil, &netstack.Guard{Exempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if _, err := p2.Resolve(context.Background(), host+"/app:1", nil); err != nil {
		t.Fatalf("with 127.0.0.1/32 exempt: %v", err)
	}
}

func TestWrongPlatformAndMissingImage(t *testing.T) {
	arm, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	host := serveRegistry(t, "library/arm:1", arm)
	p, err := NewPuller([]string{"docker.io=http://" + host}, &netstack.Guard{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Resolve(context.Background(), "docker.io/arm:1", nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "arm64") {
		t.Errorf("an arm64 image: %v", err)
	}
	if _, err := p.Resolve(context.Background(), "docker.io/nothing:1", nil); err == nil || !strings.Contains(err.Error(), "nothing") {
		t.Errorf("a missing image: %v", err)
	}
	if _, err := p.Resolve(context.Background(), "Bad Ref!", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("a bad reference: %v", err)
	}
}

func TestMirrorFlags(t *testing.T) {
	for _, bad := range []string{"docker.io", "=http://x", "docker.io=ftp://x", "docker.io=http://", "docker.io=http://x/path", "docker.io=http://u:p@x"} {
		if _, err := NewPuller([]string{bad}, &netstack.Guard{}); err == nil {
			t.Errorf("mirror %q accepted", bad)
		}
	}
	p, err := NewPuller([]string{"docker.io=https://mirror.example", "ghcr.io=http://10.0.0.5:5000"}, &netstack.Guard{})
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		"python:3.12":           "mirror.example/library/python:3.12",
		"index.docker.io/a/b:c": "mirror.example/a/b:c",
		"ghcr.io/o/r:1":         "10.0.0.5:5000/o/r:1",
		"quay.io/o/r:1":         "quay.io/o/r:1",
		"ghcr.io/o/r@sha256:" + strings.Repeat("a", 64): "10.0.0.5:5000/o/r@sha256:" + strings.Repeat("a", 64),
	} {
		r, err := ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		src, _, err := p.source(r)
		if err != nil || src.Name() != want {
			t.Errorf("%s -> %v, %v; want %s", ref, src, err, want)
		}
	}
}

func TestParseCredentials(t *testing.T) {
	for raw, ok := range map[string]bool{
		``:     true,
		`null`: true,
		`{"type":"registry","username":"u","password":"p"}`: true,
		`{"type":"registry","username":"u"}`:                false,
		`{"type":"gcp","serviceAccountJson":"{\"a\":1}"}`:   true,
		`{"type":"gcp","serviceAccountJson":"nope"}`:        false,
		`{"type":"aws","awsAccessKeyId":"k"}`:               false,
		`{"type":"other"}`:                                  false,
		`[1]`:                                               false,
	} {
		c, err := ParseCredentials([]byte(raw))
		if (err == nil) != ok || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", raw, err)
		}
		if err == nil && raw != "" && raw != "null" && c.authenticator() == nil {
			t.Errorf("%s: no authenticator", raw)
		}
	}
	// A password never shows in an error.
	_, err := ParseCredentials([]byte(`{"type":"registry","password":"s3cret"}`))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v", err)
	}
}

// TestUnpackStaysInside feeds tars that try to leave the directory: through "..", an absolute
// link, a relative link climbing out, a hard link to a host file.
func TestUnpackStaysInside(t *testing.T) {
	for name, es := range map[string][]entry{
		"dotdot":        {{name: "../../escaped", body: "x"}},
		"absolute link": {{name: "l", typ: tar.TypeSymlink, link: "/"}, {name: "l/escaped", body: "x"}},
		"climbing link": {{name: "d/", typ: tar.TypeDir, mode: 0o755}, {name: "d/up", typ: tar.TypeSymlink, link: "../../.."}, {name: "d/up/escaped", body: "x"}},
		"hard link out": {{name: "h", typ: tar.TypeLink, link: "../outside/sentinel"}},
		"link then dir": {{name: "l", typ: tar.TypeSymlink, link: "../outside"}, {name: "l/", typ: tar.TypeDir, mode: 0o777}, {name: "l/escaped", body: "x"}},
	} {
		t.Run(name, func(t *testing.T) {
			top := t.TempDir()
			dir := unpackDirs(t, top)
			_, _ = UnpackTar(context.Background(), bytes.NewReader(tarOf(t, es...)), dir, DefaultLimits)
			checkOutside(t, top, dir)
		})
	}
}

// unpackDirs makes top/a/root, the directory to unpack into, and beside it top/a/outside
// holding a sentinel file: what checkOutside checks.
func unpackDirs(t testing.TB, top string) string {
	t.Helper()
	dir := filepath.Join(top, "a", "root")
	outside := filepath.Join(top, "a", "outside")
	for _, d := range []string{dir, outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "sentinel"), []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkOutside fails when anything but dir's own tree and the sentinel exists under top, or the
// sentinel changed.
func checkOutside(t testing.TB, top, dir string) {
	t.Helper()
	_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(top, p)
		switch {
		case p == dir:
			return fs.SkipDir
		case rel == "." || rel == "a" || rel == "a/outside" || rel == "a/outside/sentinel":
		default:
			t.Errorf("unpacking wrote %s, outside its directory", rel)
		}
		return nil
	})
	b, err := os.ReadFile(filepath.Join(top, "a", "outside", "sentinel"))
	if err != nil || string(b) != "host" {
		t.Errorf("the sentinel outside is now %q, %v", b, err)
	}
	fi, err := os.Stat(filepath.Join(top, "a", "outside"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the directory outside: %v, %v", fi, err)
	}
}

func TestUnpackLimits(t *testing.T) {
	big := tarOf(t, entry{name: "a", body: strings.Repeat("x", 100)}, entry{name: "b", body: strings.Repeat("x", 100)})
	if _, err := UnpackTar(context.Background(), bytes.NewReader(big), t.TempDir(), Limits{Bytes: 150, Entries: 10}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("200 bytes under a 150-byte limit: %v", err)
	}
	if _, err := UnpackTar(context.Background(), bytes.NewReader(big), t.TempDir(), Limits{Bytes: 1000, Entries: 1}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("2 entries under a 1-entry limit: %v", err)
	}
	st, err := UnpackTar(context.Background(), bytes.NewReader(big), t.TempDir(), Limits{Bytes: 200, Entries: 2})
	if err != nil || st.Bytes != 200 || st.Entries != 2 {
		t.Errorf("exactly at the limits: %+v, %v", st, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := UnpackTar(ctx, bytes.NewReader(big), t.TempDir(), DefaultLimits); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// FuzzUnpackTar: whatever the tar, nothing is written outside the directory and nothing panics.
func FuzzUnpackTar(f *testing.F) {
	f.Add(tarOf(f, entry{name: "l", typ: tar.TypeSymlink, link: "../outside"}, entry{name: "l/x", body: "x"}))
	f.Add(tarOf(f, entry{name: "d/", typ: tar.TypeDir}, entry{name: "d/h", typ: tar.TypeLink, link: "../outside/sentinel"}))
	f.Add(tarOf(f, entry{name: "a", body: "1"}, entry{name: "a/", typ: tar.TypeDir}, entry{name: "a", typ: tar.TypeSymlink, link: "/"}, entry{name: "a/b", body: "2"}))
	base := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		top, err := os.MkdirTemp(base, "")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = os.RemoveAll(top) }()
		dir := unpackDirs(t, top)
		_, _ = UnpackTar(context.Background(), bytes.NewReader(data), dir, Limits{Bytes: 1 << 20, Entries: 1000})
		checkOutside(t, top, dir)
	})
}

// BenchmarkUnpackTar: 10,000 small files in directories three deep, as an image's /usr is.
func BenchmarkUnpackTar(b *testing.B) {
	var es []entry
	for d := range 100 {
		es = append(es, entry{name: fmt.Sprintf("usr/lib/d%d/", d), typ: tar.TypeDir, mode: 0o755})
		for f := range 100 {
			es = append(es, entry{name: fmt.Sprintf("usr/lib/d%d/f%d", d, f), body: "0123456789"})
		}
	}
	data := tarOf(b, es...)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		b.StartTimer()
		if _, err := UnpackTar(context.Background(), bytes.NewReader(data), dir, DefaultLimits); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUnpackReplacements: entries that replace earlier ones (a link to a directory by a
// directory, a directory by a file) leave the tree a later layer means.
func TestUnpackReplacements(t *testing.T) {
	dir := t.TempDir()
	data := tarOf(t,
		entry{name: "real/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "a", typ: tar.TypeSymlink, link: "real"},
		entry{name: "a/c/x", body: "through the link"},
		entry{name: "a/", typ: tar.TypeDir, mode: 0o700},
		entry{name: "a/c/y", body: "in the directory"},
		entry{name: "d/e/f", body: "f"},
		entry{name: "d/e", body: "now a file"},
		entry{name: "d/e2/g", body: "g"},
	)
	if _, err := UnpackTar(context.Background(), bytes.NewReader(data), dir, DefaultLimits); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"real/c/x": "through the link", "a/c/y": "in the directory", "d/e": "now a file", "d/e2/g": "g"} {
		if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", p, b, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dir, "a")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("a: %v %v", fi, err)
	}
}

// TestMirrorTransportReachesOnlyTheMirror: a pull through a mirror reaches the mirror's own
// address; anything else it is sent to (a layer's foreign URL, a redirect) is guarded.
func TestMirrorTransportReachesOnlyTheMirror(t *testing.T) {
	host := serveRegistry(t, "library/app:1", testImage(t))
	p, err := NewPuller([]string{"docker.io=http://" + host}, &netstack.Guard{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dial := p.trusted.(*http.Transport).DialContext
	c, err := dial(context.Background(), "tcp", host)
	if err != nil {
		t.Fatalf("the mirror itself: %v", err)
	}
	_ = c.Close()
	if _, err := dial(context.Background(), "tcp", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "not reachable for builds") {
		t.Fatalf("another loopback port through the mirror's transport: %v", err)
	}
}

func TestUnpackRefusesLongNames(t *testing.T) {
	long := strings.Repeat("a/", 2100) + "f"
	for _, e := range []entry{{name: long, body: "x"}, {name: "l", typ: tar.TypeSymlink, link: long}} {
		if _, err := UnpackTar(context.Background(), bytes.NewReader(tarOf(t, e)), t.TempDir(), DefaultLimits); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%d-byte name or link: %v", len(long), err)
		}
	}
}
