package filesystem

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/pkg/envd"
	pb "github.com/cellhq/cell/proto/filesystem"
)

func me(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func TestResolve(t *testing.T) {
	id := process.Identity{Name: "user", Home: "/home/user"}
	for in, want := range map[string]string{
		"a.txt": "/home/user/a.txt", "~": "/home/user", "~/x/../y": "/home/user/y", "/etc/../tmp/z": "/tmp/z",
		"../../etc/passwd": "/etc/passwd", // relative to home, as E2B does; the guest is the boundary
	} {
		got, err := resolve(in, id)
		if err != nil || got != want {
			t.Errorf("resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a\x00b", "~root/x"} {
		if _, err := resolve(bad, id); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("resolve(%q): %v", bad, err)
		}
	}
}

func filesServer(t *testing.T, token string) (*httptest.Server, *state.Defaults) {
	d := state.New(me(t))
	if token != "" {
		d.Apply(state.Update{Token: &token})
	}
	srv := httptest.NewServer(&Files{Defaults: d, Users: &process.Users{}})
	t.Cleanup(srv.Close)
	return srv, d
}

func TestFilesUploadDownloadAndSignatures(t *testing.T) {
	srv, _ := filesServer(t, "tok")
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "f.txt")
	q := url.Values{"path": {p}}

	// Without the token or a signature: refused.
	resp, err := http.Post(srv.URL+"/files?"+q.Encode(), "application/octet-stream", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("unauthenticated upload: %d", resp.StatusCode)
	}

	// Signed, gzip-encoded octet-stream upload with metadata.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("hello"))
	_ = zw.Close()
	wq := url.Values{"path": {p}, "signature": {envd.Sign(p, "write", "", "tok", 0)}}
	req, _ := http.NewRequest("POST", srv.URL+"/files?"+wq.Encode(), &gz)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("X-Metadata-Colour", "blue")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"path":"`+p+`"`) {
		t.Fatalf("signed upload: %d %s", resp.StatusCode, body)
	}
	if got, _ := os.ReadFile(p); string(got) != "hello" {
		t.Fatalf("content %q", got)
	}
	if md := readMetadata(p); md["colour"] != "blue" {
		t.Errorf("metadata %v", md) // tmpfs without user xattrs would fail here: then the test says so
	}

	// A write signature does not allow reads; an expired signature is refused; a valid one works.
	for _, c := range []struct {
		sig    string
		exp    int64
		status int
	}{
		{envd.Sign(p, "write", "", "tok", 0), 0, 401},
		{envd.Sign(p, "read", "", "tok", time.Now().Add(-time.Minute).Unix()), time.Now().Add(-time.Minute).Unix(), 401},
		{envd.Sign(p, "read", "", "tok", time.Now().Add(time.Minute).Unix()), time.Now().Add(time.Minute).Unix(), 200},
		{envd.Sign(p, "read", "", "other", 0), 0, 401},
	} {
		rq := url.Values{"path": {p}, "signature": {c.sig}}
		if c.exp != 0 {
			rq.Set("signature_expiration", strconv.FormatInt(c.exp, 10))
		}
		resp, err := http.Get(srv.URL + "/files?" + rq.Encode())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("download with %s: %d, want %d: %s", c.sig, resp.StatusCode, c.status, b)
		}
		if c.status == 200 && string(b) != "hello" {
			t.Errorf("downloaded %q", b)
		}
	}

	// With the token: missing files are 404, directories 400.
	for path, status := range map[string]int{filepath.Join(dir, "missing"): 404, dir: 400} {
		req, _ := http.NewRequest("GET", srv.URL+"/files?"+url.Values{"path": {path}}.Encode(), nil)
		req.Header.Set(envd.AccessTokenHeader, "tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != status {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, status)
		}
	}
}

func TestWatcherBoundsItsBuffer(t *testing.T) {
	dir := t.TempDir()
	svc := New(slog.New(slog.DiscardHandler), state.New(me(t)), &process.Users{})
	defer svc.Close()
	ctx := context.Background()
	res, err := svc.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	wid := res.Msg.GetWatcherId()
	if err := os.WriteFile(filepath.Join(dir, "a"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var evs []*pb.FilesystemEvent
	for i := 0; i < 100 && len(evs) == 0; i++ {
		time.Sleep(10 * time.Millisecond)
		r, err := svc.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: wid}))
		if err != nil {
			t.Fatal(err)
		}
		evs = r.Msg.GetEvents()
	}
	if len(evs) == 0 || evs[0].GetName() != "a" || evs[0].GetType() != pb.EventType_EVENT_TYPE_CREATE {
		t.Fatalf("events %v", evs)
	}
	// Flood past the bound: the next poll reports the overflow instead of growing.
	for i := 0; i < MaxBufferedEvents+500; i++ {
		_ = os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(i)), nil, 0o644)
	}
	// The watcher reads the flood in its own time (slowly on a loaded machine): the poll waits
	// until it has dropped some, without taking the buffer before that.
	svc.mu.Lock()
	w := svc.watchers[wid]
	svc.mu.Unlock()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		w.mu.Lock()
		dropped := w.dropped
		w.mu.Unlock()
		if dropped > 0 || time.Now().After(deadline) {
			break
		}
	}
	_, err = svc.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: wid}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "dropped") {
		t.Fatalf("overflow: %v", err)
	}
	if _, err := svc.RemoveWatcher(ctx, connect.NewRequest(&pb.RemoveWatcherRequest{WatcherId: wid})); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: wid})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("removed watcher: %v", err)
	}
}

func TestListDirDepthAndMakeDir(t *testing.T) {
	dir := t.TempDir()
	svc := New(slog.New(slog.DiscardHandler), state.New(me(t)), &process.Users{})
	ctx := context.Background()
	if _, err := svc.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(dir, "a/b/c")})); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(dir, "a")})); connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("existing dir: %v", err)
	}
	for depth, want := range map[uint32]int{0: 1, 1: 1, 2: 2, 5: 3} {
		r, err := svc.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: dir, Depth: depth}))
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Msg.GetEntries()) != want {
			t.Errorf("depth %d: %d entries, want %d", depth, len(r.Msg.GetEntries()), want)
		}
	}
	if _, err := svc.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: filepath.Join(dir, "nope")})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("remove missing: %v", err)
	}
}

func TestGzipOnlyWhenItPays(t *testing.T) {
	srv, _ := filesServer(t, "")
	dir := t.TempDir()
	text := filepath.Join(dir, "text.txt")
	random := filepath.Join(dir, "random.bin")
	if err := os.WriteFile(text, bytes.Repeat([]byte("hello world\n"), 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 100000)
	if _, err := rand.Read(rnd); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(random, rnd, 0o644); err != nil {
		t.Fatal(err)
	}
	for path, wantGzip := range map[string]bool{text: true, random: false} {
		req, _ := http.NewRequest("GET", srv.URL+"/files?"+url.Values{"path": {path}}.Encode(), nil)
		req.Header.Set("Accept-Encoding", "gzip, deflate")
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if got := resp.Header.Get("Content-Encoding") == "gzip"; got != wantGzip {
			t.Errorf("%s: gzip %v, want %v", path, got, wantGzip)
		}
	}
}

// TestDownloadWholeRangeAndConditional: a whole file comes in large writes with its length; a
// range or a conditional request is still answered as HTTP says (206, 304).
func TestDownloadWholeRangeAndConditional(t *testing.T) {
	srv, _ := filesServer(t, "")
	p := filepath.Join(t.TempDir(), "data.bin")
	data := make([]byte, 3*fileChunk+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	get := func(method string, h map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+"/files?"+url.Values{"path": {p}}.Encode(), nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp, b
	}
	resp, b := get("GET", nil)
	if resp.StatusCode != 200 || !bytes.Equal(b, data) || resp.ContentLength != int64(len(data)) {
		t.Fatalf("whole file: %d, %d bytes (length %d), equal %v", resp.StatusCode, len(b), resp.ContentLength, bytes.Equal(b, data))
	}
	lm := resp.Header.Get("Last-Modified")
	if lm == "" {
		t.Fatal("no Last-Modified")
	}
	if resp, b := get("HEAD", nil); resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD: %d, %d bytes, length %d", resp.StatusCode, len(b), resp.ContentLength)
	}
	if resp, b := get("GET", map[string]string{"Range": "bytes=10-19"}); resp.StatusCode != 206 || !bytes.Equal(b, data[10:20]) {
		t.Fatalf("range: %d %x", resp.StatusCode, b)
	}
	if resp, _ := get("GET", map[string]string{"If-Modified-Since": lm}); resp.StatusCode != 304 {
		t.Fatalf("If-Modified-Since: %d, want 304", resp.StatusCode)
	}
}

// TestDownloadPseudoAndSmallFiles: a file's size is not trusted for its length. /proc's files
// say 0 bytes and /sys's 4096 whatever they hold; they come whole, as do small regular files and
// an empty one. A pseudo file longer than what is read ahead comes without a length, whole.
func TestDownloadPseudoAndSmallFiles(t *testing.T) {
	srv, _ := filesServer(t, "")
	dir := t.TempDir()
	small := filepath.Join(dir, "small.txt")
	if err := os.WriteFile(small, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A /proc file longer than fileChunk (megabytes of kernel symbols).
	long, err := os.ReadFile("/proc/kallsyms")
	if err != nil || len(long) <= fileChunk {
		t.Fatalf("/proc/kallsyms: %d bytes, %v", len(long), err)
	}
	for _, c := range []struct {
		path   string
		want   func([]byte) bool
		length bool // sent with a Content-Length
	}{
		{small, func(b []byte) bool { return string(b) == "hello\n" }, true},
		{empty, func(b []byte) bool { return len(b) == 0 }, true},
		{"/proc/self/status", func(b []byte) bool { return bytes.Contains(b, []byte("\nPid:\t")) }, true},
		{"/proc/cpuinfo", func(b []byte) bool { return bytes.Contains(b, []byte("processor")) }, true},
		{"/sys/kernel/mm/transparent_hugepage/enabled", func(b []byte) bool { return len(b) > 0 && len(b) < 4096 }, true},
		{"/proc/kallsyms", func(b []byte) bool { return len(b) > fileChunk && bytes.HasPrefix(b, long[:64]) }, false},
	} {
		resp, err := http.Get(srv.URL + "/files?" + url.Values{"path": {c.path}}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !c.want(b) {
			t.Errorf("%s: %d, %d bytes %q…, %v", c.path, resp.StatusCode, len(b), b[:min(len(b), 80)], err)
			continue
		}
		if hasLength := resp.ContentLength >= 0; hasLength != c.length || (hasLength && resp.ContentLength != int64(len(b))) {
			t.Errorf("%s: Content-Length %d for %d bytes", c.path, resp.ContentLength, len(b))
		}
	}
}

// TestMultipartUpload sends what E2B's SDKs send: a multipart body, here with a field before the
// file and a file larger than the parse buffer whose bytes include "\r\n--" and most of the
// boundary. The file arrives whole.
func TestMultipartUpload(t *testing.T) {
	srv, _ := filesServer(t, "tok")
	p := filepath.Join(t.TempDir(), "big.bin")
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	data := make([]byte, 3*multipartBuffer+12345)
	_, _ = rand.Read(data)
	near := []byte("\r\n--" + mw.Boundary()[:len(mw.Boundary())-1])
	for _, at := range []int{0, multipartBuffer - 3, 2*multipartBuffer + 7, len(data) - len(near)} {
		copy(data[at:], near)
	}
	if err := mw.WriteField("note", "not a file"); err != nil {
		t.Fatal(err)
	}
	fw, err := mw.CreateFormFile("file", "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	_ = mw.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/files?"+url.Values{"path": {p}}.Encode(), &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set(envd.AccessTokenHeader, "tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("uploaded %d bytes, want %d (or the content differs)", len(got), len(data))
	}
}

// TestMultipartSeveralFiles: without a path in the query, each part goes to the whole path its
// filename gives (as E2B's SDKs write several files at once), parents created; two parts for
// one path are refused.
func TestMultipartSeveralFiles(t *testing.T) {
	srv, _ := filesServer(t, "")
	dir := t.TempDir()
	post := func(files map[string]string, order []string) (int, string) {
		t.Helper()
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for _, name := range order {
			fw, err := mw.CreateFormFile("file", name)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.WriteString(fw, files[name])
		}
		_ = mw.Close()
		req, _ := http.NewRequest("POST", srv.URL+"/files", &body)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	a, c := filepath.Join(dir, "m", "a.txt"), filepath.Join(dir, "m", "b", "c.txt")
	files := map[string]string{a: "A", c: "C"}
	if code, body := post(files, []string{a, c}); code != 200 || !strings.Contains(body, `"path":"`+c+`"`) {
		t.Fatalf("upload: %d %s", code, body)
	}
	for p, want := range files {
		if got, err := os.ReadFile(p); err != nil || string(got) != want {
			t.Fatalf("%s: %q, %v; want %q", p, got, err, want)
		}
	}
	if code, body := post(files, []string{a, a}); code != 400 || !strings.Contains(body, a) {
		t.Fatalf("two parts for one path: %d %s", code, body)
	}
}

type askedReader struct {
	r     io.Reader
	asked []int
}

func (a *askedReader) Read(p []byte) (int, error) {
	a.asked = append(a.asked, len(p))
	return a.r.Read(p)
}

// TestPieceReader: a part is read in pieces of at most partPiece, which fill the caller's buffer.
func TestPieceReader(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefg"), 10000)
	a := &askedReader{r: bytes.NewReader(data)}
	buf := make([]byte, 5*partPiece+100)
	n, err := pieceReader{a}.Read(buf)
	if err != nil || n != len(buf) || !bytes.Equal(buf, data[:n]) {
		t.Fatalf("read %d of %d: %v", n, len(buf), err)
	}
	for _, l := range a.asked {
		if l > partPiece {
			t.Fatalf("asked for %d bytes at once (more than %d): %v", l, partPiece, a.asked)
		}
	}
	got, err := io.ReadAll(io.MultiReader(bytes.NewReader(buf), pieceReader{a}))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("whole: %d bytes, %v", len(got), err)
	}
}
