package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/vmm"
)

// failingBoot is a VM runtime whose boots fail as QEMU's do when it cannot open a disk: the
// error carries QEMU's stderr (a path on the host) and the guest's console.
type failingBoot struct{ unreachable }

const hostPath = "/home/alice/.local/share/cell/run/abc/disk.qcow2"

func (failingBoot) Boot(context.Context, sandbox.Options) (manager.Instance, error) {
	return nil, fmt.Errorf("booting sandbox: %w", &vmm.BootError{
		Err:         fmt.Errorf("%w during boot: exit status 1", vmm.ErrQEMUExited),
		QEMUStderr:  "qemu-system-x86_64: -drive file=" + hostPath + ",if=none: Could not open '" + hostPath + "': Permission denied",
		ConsoleTail: "secret guest output",
	})
}

// syncBuffer is a log destination the server's goroutines write to while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// setupRuntime is setup with rt as the VM runtime and the API's log kept; configure, if any,
// changes the API before it serves.
func setupRuntime(t *testing.T, rt manager.Runtime, configure ...func(*API)) (*httptest.Server, string, *store.Store, *syncBuffer) {
	t.Helper()
	mgr, keys, key, st := deps(t, rt, nil)
	logs := &syncBuffer{}
	a := New(Config{Manager: mgr, Keys: keys, Log: slog.New(slog.NewTextHandler(logs, nil))})
	for _, f := range configure {
		f(a)
	}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return srv, key, st, logs
}

var errorIDRE = regexp.MustCompile(`error id ([0-9a-f]{12})`)

// A 500 says what failed and an error id; what the error said (host paths, QEMU's stderr, the
// guest's console) is in the daemon's log under that id, not in the answer.
func TestInternalErrorsHideDetails(t *testing.T) {
	srv, key, st, logs := setupRuntime(t, failingBoot{unreachable{t}})
	a := call(t, srv, "POST", "/sandboxes", key, `{"templateID": "base"}`, nil)
	if a.status != 500 {
		t.Fatalf("create with a failing boot: %d %s", a.status, a.raw)
	}
	for _, leak := range []string{"/home/alice", "qemu-system", "Permission denied", "secret guest output", "disk.qcow2"} {
		if strings.Contains(a.raw, leak) {
			t.Errorf("the answer tells %q: %s", leak, a.raw)
		}
	}
	msg, _ := a.body["message"].(string)
	m := errorIDRE.FindStringSubmatch(msg)
	if !strings.HasPrefix(msg, "sandbox failed to start") || m == nil {
		t.Fatalf("message %q: want what failed and an error id", msg)
	}
	if log := logs.String(); !strings.Contains(log, m[1]) || !strings.Contains(log, hostPath) {
		t.Fatalf("the log does not have the details under error id %s:\n%s", m[1], log)
	}

	// A failure of the store while checking a key: the same.
	_ = st.Close()
	a = call(t, srv, "GET", "/v2/sandboxes", key, "", nil)
	msg, _ = a.body["message"].(string)
	if a.status != 500 || !errorIDRE.MatchString(msg) || strings.Contains(msg, "sql") {
		t.Fatalf("store failure: %d %s", a.status, a.raw)
	}
}

// answerFor keeps 4xx messages (they name the field or the sandbox) and hides 5xx ones.
func TestAnswerFor(t *testing.T) {
	for _, c := range []struct {
		err      error
		code     int
		mention  string
		internal bool
	}{
		{fmt.Errorf("%w: timeout: must be between 0 and 86400 seconds", manager.ErrInvalid), 400, "timeout", false},
		{fmt.Errorf("%w: sandbox %q", manager.ErrNotFound, "abc"), 404, "abc", false},
		{fmt.Errorf("%w: template %q: in use: used by sb1", manager.ErrConflict, "t1"), 409, "sb1", false},
		{fmt.Errorf("%w: draining", manager.ErrShutdown), 503, "shutting down", false},
		{fmt.Errorf("opening %s: %w", hostPath, errors.New("no space left on device")), 500, "internal error", true},
		{fmt.Errorf("%w: pausing sandbox abc: writing %s: file too large", manager.ErrPauseUndone, hostPath), 500, "runs on", true},
	} {
		code, msg, id := answerFor(c.err)
		if code != c.code || !strings.Contains(msg, c.mention) || (id != "") != c.internal {
			t.Errorf("%v: %d %q %q", c.err, code, msg, id)
		}
		if c.internal && (strings.Contains(msg, hostPath) || !strings.Contains(msg, id)) {
			t.Errorf("%v: answered %q", c.err, msg)
		}
	}
}

// A snapshot that sandboxes still depend on is a 409 naming them, not the snapshot's directory
// on the host.
func TestDeleteTemplateInUseHidesDir(t *testing.T) {
	qemuImg, err := sandbox.FindTool("qemu-img", "qemu-utils")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	home, run := t.TempDir(), t.TempDir()
	st, err := store.Open(ctx, filepath.Join(home, "cell.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	keys := auth.Keys{Store: st}
	key, _, err := keys.Create(ctx, "team-a", "test")
	if err != nil {
		t.Fatal(err)
	}
	team, err := keys.Team(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	tdir := filepath.Join(home, "templates", "snap1", "0123456789abcdef")
	if err := os.MkdirAll(filepath.Join(run, "sb1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(tdir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tdir, "meta.json"), []byte(`{"name":"snap1","fingerprint":"0123"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tdisk := filepath.Join(tdir, "disk.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", tdisk, "16M"},
		{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", tdisk, filepath.Join(run, "sb1", "disk.qcow2")},
	} {
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
	}
	templates := &sandbox.TemplateSet{}
	templates.SetTemplate("snap1", &sandbox.Template{Name: "snap1", Dir: tdir, Disk: tdisk, Full: true, Team: team})
	mgr, err := manager.New(ctx, manager.Config{Runtime: unreachable{t}, Templates: templates, Store: st, RunDir: run, Home: home})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Config{Manager: mgr, Keys: keys}))
	t.Cleanup(srv.Close)
	a := call(t, srv, "DELETE", "/templates/snap1", key, "", nil)
	if a.status != 409 || !strings.Contains(a.raw, "sb1") || strings.Contains(a.raw, home) {
		t.Fatalf("deleting a snapshot in use: %d %s", a.status, a.raw)
	}
}
