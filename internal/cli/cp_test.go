package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/pkg/client"
	fspb "github.com/cellhq/cell/proto/filesystem"
	"github.com/cellhq/cell/proto/filesystem/filesystemconnect"
)

// guestEntry is one entry of a hostile guest's file system.
type guestEntry struct {
	typ    fspb.FileType
	mode   uint32
	data   string // a file's bytes
	target string // a link's target
}

func gFile(mode uint32, data string) guestEntry {
	return guestEntry{typ: fspb.FileType_FILE_TYPE_FILE, mode: mode, data: data}
}
func gDir(mode uint32) guestEntry {
	return guestEntry{typ: fspb.FileType_FILE_TYPE_DIRECTORY, mode: mode}
}
func gLink(target string) guestEntry {
	return guestEntry{typ: fspb.FileType_FILE_TYPE_SYMLINK, mode: 0o777, target: target}
}

// hostileGuest is a sandbox's envd as Cell's client reaches it (the Connect filesystem service
// and GET /files behind cell serve's connect route), serving the entries in tree (by absolute
// path) and lying where told: statPath replaces the path (and name) Stat answers, extra adds raw
// entries to a directory's listing, listErr is ListDir's error message.
type hostileGuest struct {
	filesystemconnect.UnimplementedFilesystemHandler
	tree     map[string]guestEntry
	statPath string
	extra    map[string][]*fspb.EntryInfo
	listErr  string
	endless  bool // every directory holds a directory "a"
}

func (g *hostileGuest) info(p string, e guestEntry) *fspb.EntryInfo {
	out := &fspb.EntryInfo{Name: path.Base(p), Path: p, Type: e.typ, Mode: e.mode, Size: int64(len(e.data))}
	if e.typ == fspb.FileType_FILE_TYPE_SYMLINK {
		out.SymlinkTarget = &e.target
	}
	return out
}

func (g *hostileGuest) Stat(_ context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	p := path.Clean(req.Msg.GetPath())
	e, ok := g.tree[p]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: no such file", p))
	}
	info := g.info(p, e)
	if g.statPath != "" {
		info.Path, info.Name = g.statPath, path.Base(g.statPath)
	}
	return connect.NewResponse(&fspb.StatResponse{Entry: info}), nil
}

func (g *hostileGuest) ListDir(_ context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	dir := path.Clean(req.Msg.GetPath())
	if g.listErr != "" {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("%s", g.listErr))
	}
	var out []*fspb.EntryInfo
	for p, e := range g.tree {
		if p != dir && path.Dir(p) == dir {
			out = append(out, g.info(p, e))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	out = append(out, g.extra[dir]...)
	if g.endless {
		out = append(out, &fspb.EntryInfo{Name: "a", Path: path.Join(dir, "a"), Type: fspb.FileType_FILE_TYPE_DIRECTORY, Mode: 0o755})
	}
	return connect.NewResponse(&fspb.ListDirResponse{Entries: out}), nil
}

// serve starts the guest behind a fake cell serve and returns a client of it.
func (g *hostileGuest) serve(t *testing.T) *client.Client {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(filesystemconnect.NewFilesystemHandler(g))
	mux.HandleFunc("POST /sandboxes/sb1/connect", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"sandboxID":"sb1","templateID":"base","clientID":"c"}`)
	})
	mux.HandleFunc("GET /files", func(w http.ResponseWriter, r *http.Request) {
		e, ok := g.tree[path.Clean(r.URL.Query().Get("path"))]
		if !ok {
			http.Error(w, "no such file", http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, e.data)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return client.New(srv.URL, "k")
}

// hostPlace is a copy's destination dst beside a directory outside (holding a file victim) that
// no copy may touch.
type hostPlace struct {
	base, dst, outside string
	before             map[string]string
}

func newHostPlace(t *testing.T) *hostPlace {
	t.Helper()
	base := t.TempDir()
	p := &hostPlace{base: base, dst: filepath.Join(base, "dst"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{p.dst, p.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(p.outside, "victim"), []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.before = p.outsideState(t)
	return p
}

// outsideState describes everything under base but dst's contents: each entry's type, mode and
// content or target, base's own mode included.
func (p *hostPlace) outsideState(t *testing.T) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(p.base, func(f string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(p.base, f)
		desc := info.Mode().String()
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(f)
			desc += " -> " + target
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(f)
			desc += " " + string(b)
		}
		state[rel] = desc
		if f == p.dst {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// assertOutsideUntouched fails t if anything but dst's contents changed.
func (p *hostPlace) assertOutsideUntouched(t *testing.T) {
	t.Helper()
	after := p.outsideState(t)
	for k, v := range p.before {
		if after[k] != v {
			t.Errorf("outside the destination, %s changed: %q -> %q", k, v, after[k])
		}
	}
	for k, v := range after {
		if _, ok := p.before[k]; !ok {
			t.Errorf("outside the destination, %s was made: %q", k, v)
		}
	}
}

// listTree describes every entry under dir (relative name, mode, content or target).
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(f string, d fs.DirEntry, err error) error {
		if err != nil || f == dir {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, f)
		desc := rel + " " + info.Mode().String()
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(f)
			desc += " -> " + target
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(f)
			desc += " " + string(b)
		}
		out = append(out, desc)
		return nil
	})
	return out
}

func cpOut(t *testing.T, cl *client.Client, src, dst string) (string, error) {
	t.Helper()
	var warn bytes.Buffer
	err := copyPaths(context.Background(), cl, src, dst, "", nil, io.Discard, &warn)
	return warn.String(), err
}

// TestCopyOutRefusesNamesLeavingTheCopy: a sandbox that lists "..", "../escape", "a/b", ".", an
// empty name or one with a NUL in a directory copied out gets an error, and nothing is written
// outside the destination.
func TestCopyOutRefusesNamesLeavingTheCopy(t *testing.T) {
	for _, bad := range []string{"..", "../escape", "a/b", ".", "", "x\x00y", "/etc"} {
		t.Run(fmt.Sprintf("%q", bad), func(t *testing.T) {
			g := &hostileGuest{
				tree: map[string]guestEntry{"/d": gDir(0o755), "/d/fine": gFile(0o644, "x")},
				extra: map[string][]*fspb.EntryInfo{"/d": {{Name: bad, Path: "/d/" + bad,
					Type: fspb.FileType_FILE_TYPE_FILE, Mode: 0o644}}},
			}
			p := newHostPlace(t)
			_, err := cpOut(t, g.serve(t), "sb1:/d", filepath.Join(p.dst, "out"))
			if err == nil || !strings.Contains(err.Error(), "listed an entry named") {
				t.Fatalf("copy of a listing with %q: %v", bad, err)
			}
			p.assertOutsideUntouched(t)
			if got := listTree(t, p.dst); strings.Join(got, "\n") != "out drwx------\nout/fine -rw-r--r-- x" {
				t.Fatalf("the destination holds:\n%s", strings.Join(got, "\n"))
			}
		})
	}
}

// TestCopyOutNamesTheCopyAsTheUserDid: what the sandbox answers as the path of the entry copied
// out ("..", "/etc", "a/../..") does not name anything on the host: `cp sb1:/d DIR` makes DIR/d,
// with the mode the guest gave d.
func TestCopyOutNamesTheCopyAsTheUserDid(t *testing.T) {
	for _, lie := range []string{"..", "/etc", "a/../..", "/d/..", "/"} {
		t.Run(lie, func(t *testing.T) {
			g := &hostileGuest{statPath: lie, tree: map[string]guestEntry{"/d": gDir(0o700), "/d/f": gFile(0o600, "data")}}
			p := newHostPlace(t)
			if _, err := cpOut(t, g.serve(t), "sb1:/d", p.dst); err != nil {
				t.Fatal(err)
			}
			p.assertOutsideUntouched(t)
			if got := listTree(t, p.dst); strings.Join(got, "\n") != "d drwx------\nd/f -rw------- data" {
				t.Fatalf("the destination holds:\n%s", strings.Join(got, "\n"))
			}
		})
	}
}

// TestCopyOutTopNameFromTheUsersPath: into an existing directory, the copy takes the last name
// of the sandbox path the user typed (cleaned); a path with no name of its own is refused.
func TestCopyOutTopNameFromTheUsersPath(t *testing.T) {
	g := &hostileGuest{tree: map[string]guestEntry{"/d": gDir(0o755), "/d/f": gFile(0o644, "x"), "/": gDir(0o755), ".": gDir(0o755)}}
	cl := g.serve(t)
	for _, src := range []string{"sb1:/", "sb1:.", "sb1:/d/.."} {
		p := newHostPlace(t)
		if _, err := cpOut(t, cl, src, p.dst); err == nil || !strings.Contains(err.Error(), "has no name of its own") {
			t.Fatalf("cp %s: %v", src, err)
		}
		p.assertOutsideUntouched(t)
		if got := listTree(t, p.dst); len(got) != 0 {
			t.Fatalf("cp %s wrote %v", src, got)
		}
	}
	// A trailing slash names the same directory.
	p := newHostPlace(t)
	if _, err := cpOut(t, cl, "sb1:/d/", p.dst); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(listTree(t, p.dst), "\n"); got != "d drwxr-xr-x\nd/f -rw-r--r-- x" {
		t.Fatalf("cp sb1:/d/ made:\n%s", got)
	}
}

// TestCopyOutDoesNotFollowALinkLeftBefore: a first copy leaves d -> outside (a link the sandbox
// made); a second copy of the same tree, where d is now a directory with a file, is refused there
// and writes nothing through the link, nor changes the mode of what it points to.
func TestCopyOutDoesNotFollowALinkLeftBefore(t *testing.T) {
	p := newHostPlace(t)
	g := &hostileGuest{tree: map[string]guestEntry{"/t": gDir(0o755), "/t/d": gLink(p.outside)}}
	cl := g.serve(t)
	if _, err := cpOut(t, cl, "sb1:/t", p.dst); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(p.dst, "t", "d")); err != nil || target != p.outside {
		t.Fatalf("the first copy's link: %q %v", target, err)
	}
	g.tree = map[string]guestEntry{"/t": gDir(0o755), "/t/d": gDir(0o777), "/t/d/victim": gFile(0o666, "pwned"),
		"/t/d/new": gFile(0o644, "pwned"), "/t/d/sub": gDir(0o777)}
	_, err := cpOut(t, cl, "sb1:/t", p.dst)
	p.assertOutsideUntouched(t)
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("second copy: %v", err)
	}
}

// TestCopyOutReplacesLinksAtFileNames: a file copied out to a name that is a link (to a file
// outside) replaces the link; the file it pointed to keeps its bytes and mode.
func TestCopyOutReplacesLinksAtFileNames(t *testing.T) {
	p := newHostPlace(t)
	victim := filepath.Join(p.outside, "victim")
	if err := os.Mkdir(filepath.Join(p.dst, "t"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(p.dst, "t", "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(p.dst, "top")); err != nil {
		t.Fatal(err)
	}
	g := &hostileGuest{tree: map[string]guestEntry{"/t": gDir(0o755), "/t/f": gFile(0o4777, "new"), "/top": gFile(0o777, "new top")}}
	cl := g.serve(t)
	if _, err := cpOut(t, cl, "sb1:/t", p.dst); err != nil {
		t.Fatal(err)
	}
	if _, err := cpOut(t, cl, "sb1:/top", filepath.Join(p.dst, "top")); err != nil {
		t.Fatal(err)
	}
	p.assertOutsideUntouched(t)
	want := "t drwxr-xr-x\nt/f -rwxrwxrwx new\ntop -rwxrwxrwx new top"
	if got := strings.Join(listTree(t, p.dst), "\n"); got != want {
		t.Fatalf("the destination holds:\n%s\nwant:\n%s", got, want)
	}
}

// TestCopyOutModesArePermissionBitsOnly: setuid, setgid and sticky bits from the guest (in
// either encoding: Unix's or Go's) are dropped; a directory without write permission is filled
// first.
func TestCopyOutModesArePermissionBitsOnly(t *testing.T) {
	p := newHostPlace(t)
	g := &hostileGuest{tree: map[string]guestEntry{
		"/t": gDir(0o1777), "/t/suid": gFile(0o4755, "a"), "/t/sgid": gFile(0o2755, "b"),
		"/t/gosuid": gFile(uint32(fs.ModeSetuid|fs.ModeSetgid|0o755), "c"), "/t/ro": gDir(0o500), "/t/ro/f": gFile(0o400, "d"),
	}}
	if _, err := cpOut(t, g.serve(t), "sb1:/t", p.dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(p.dst, "t", "ro"), 0o700) })
	want := "t drwxrwxrwx\nt/gosuid -rwxr-xr-x c\nt/ro dr-x------\nt/ro/f -r-------- d\nt/sgid -rwxr-xr-x b\nt/suid -rwxr-xr-x a"
	if got := strings.Join(listTree(t, p.dst), "\n"); got != want {
		t.Fatalf("the destination holds:\n%s\nwant:\n%s", got, want)
	}
	p.assertOutsideUntouched(t)
}

// TestCopyOutLinksAreData: a link from the guest is made as a link whatever its target, and
// nothing of the copy goes through it, even a file listed after it under the same name.
func TestCopyOutLinksAreData(t *testing.T) {
	p := newHostPlace(t)
	g := &hostileGuest{tree: map[string]guestEntry{"/t": gDir(0o755), "/t/l": gLink("../../outside"), "/t/abs": gLink(p.outside)},
		extra: map[string][]*fspb.EntryInfo{"/t": {{Name: "l", Path: "/t/l", Type: fspb.FileType_FILE_TYPE_DIRECTORY, Mode: 0o777}}}}
	cl := g.serve(t)
	// The listing has l twice, as a link and as a directory (listed after it, and empty).
	if _, err := cpOut(t, cl, "sb1:/t", filepath.Join(p.dst, "twice")); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Fatalf("a name both link and directory: %v", err)
	}
	p.assertOutsideUntouched(t)
	g.extra = nil
	if _, err := cpOut(t, cl, "sb1:/t", filepath.Join(p.dst, "t")); err != nil {
		t.Fatal(err)
	}
	want := "abs Lrwxrwxrwx -> " + p.outside + "\nl Lrwxrwxrwx -> ../../outside"
	if got := strings.Join(listTree(t, filepath.Join(p.dst, "t")), "\n"); got != want {
		t.Fatalf("the destination holds:\n%s\nwant:\n%s", got, want)
	}
	p.assertOutsideUntouched(t)
}

// TestCopyOutEscapesWhatTheGuestPrints: names and messages the sandbox chose reach the user's
// terminal with their control characters escaped.
func TestCopyOutEscapesWhatTheGuestPrints(t *testing.T) {
	esc := "\x1b]0;pwned\x07\x1b[2J\r\u202e\u009b"
	g := &hostileGuest{tree: map[string]guestEntry{"/t": gDir(0o755),
		"/t/" + esc: {typ: fspb.FileType_FILE_TYPE_UNSPECIFIED}}}
	cl := g.serve(t)
	p := newHostPlace(t)
	var stderr bytes.Buffer
	args := []string{"sandbox", "--api", cl.BaseURL, "--api-key", "k", "cp", "sb1:/t", p.dst}
	if code := execute(context.Background(), args, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	g.listErr = "bad\x1b[31m news\x07"
	if code := execute(context.Background(), args, &stderr); code != 1 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stderr.String()
	if !strings.Contains(out, "skipped /t/") || !strings.Contains(out, `bad\x1b[31m news\a`) {
		t.Fatalf("stderr: %q", out)
	}
	for _, r := range out {
		if r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u202e') {
			t.Fatalf("stderr has the control character %U: %q", r, out)
		}
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain /x y":     "plain /x y",
		"two\nlines\tok": "two\nlines\tok",
		"é ü 日本":         "é ü 日本",
		"\x1b[2J\r":      `\x1b[2J\r`,
		"\x9b\xff\x00":   `\x9b\xff\x00`,
		"\u009b\u202e":   `\u009b\u202e`,
		"\ufffd":         "\ufffd",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCopyOutEndsAnEndlessTree: a sandbox whose every directory holds another is copied out as
// deep as a path in it can go, then refused (the host, writing relative to descriptors, has no
// PATH_MAX of its own to stop it).
func TestCopyOutEndsAnEndlessTree(t *testing.T) {
	p := newHostPlace(t)
	g := &hostileGuest{tree: map[string]guestEntry{"/t": gDir(0o755)}, endless: true}
	_, err := cpOut(t, g.serve(t), "sb1:/t", p.dst)
	if err == nil || !strings.Contains(err.Error(), "deeper than a path can name") {
		t.Fatalf("err = %.200v", err)
	}
	p.assertOutsideUntouched(t)
}

// TestHostDirWithoutOpenat2: where the kernel has no openat2 (or a filter refuses it), plain
// openat with O_NOFOLLOW refuses a link just as well.
func TestHostDirWithoutOpenat2(t *testing.T) {
	p := newHostPlace(t)
	if err := os.Symlink(p.outside, filepath.Join(p.dst, "d")); err != nil {
		t.Fatal(err)
	}
	fds := openFDs(t)
	for _, noOpenat2 := range []bool{false, true} {
		h, err := openHostDir(p.dst)
		if err != nil {
			t.Fatal(err)
		}
		h.noOpenat2 = noOpenat2
		if fd, err := h.mkdir(h.fd, []string{"d"}); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("noOpenat2 %v: mkdir over a link: fd %d, %v", noOpenat2, fd, err)
		}
		if err := h.chmodDir([]string{"d"}, 0o777); err == nil {
			t.Fatalf("noOpenat2 %v: chmod through a link", noOpenat2)
		}
		if err := h.symlink([]string{"d", "l"}, "x"); err == nil {
			t.Fatalf("noOpenat2 %v: a link made under a link", noOpenat2)
		}
		// A file replaces the link, never writes through it.
		if err := h.writeFile(h.fd, []string{"d"}, 0o777, func(w io.Writer) error { _, err := io.WriteString(w, "new"); return err }); err != nil {
			t.Fatalf("noOpenat2 %v: %v", noOpenat2, err)
		}
		if got := strings.Join(listTree(t, p.dst), "\n"); got != "d -rwxrwxrwx new" {
			t.Fatalf("noOpenat2 %v: the destination holds %s", noOpenat2, got)
		}
		if err := os.Remove(filepath.Join(p.dst, "d")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p.outside, filepath.Join(p.dst, "d")); err != nil {
			t.Fatal(err)
		}
		_ = h.Close()
	}
	p.assertOutsideUntouched(t)
	if n := openFDs(t); n != fds {
		t.Fatalf("%d descriptors open before, %d after", fds, n)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
