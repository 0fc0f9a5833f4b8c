package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/client"
)

// server is one `cell serve` process over a data directory.
type server struct {
	cmd  *exec.Cmd
	url  string
	logs *bytes.Buffer
}

// daemon is a data directory with an API key in it, served by one `cell serve` at a time.
type daemon struct {
	home, key string
}

// newDaemon makes a fresh data directory and an API key.
func newDaemon(t testing.TB) *daemon {
	t.Helper()
	home := t.TempDir()
	return &daemon{home: home, key: apiKey(t, home)}
}

// serve starts `cell serve` (with args) on d's directory, and a client with d's key.
func (d *daemon) serve(t testing.TB, args ...string) (*server, *client.Client) {
	t.Helper()
	s := startServe(t, d.home, args...)
	return s, client.New(s.url, d.key)
}

func serveEnv(home string) []string {
	return append(os.Environ(), "CELL_HOME="+home, "CELL_IMAGE_HOME="+testEnv.home, "CELL_RUN_DIR=")
}

func startServe(t testing.TB, home string, args ...string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	s := &server{url: "http://" + addr, logs: &bytes.Buffer{}}
	s.cmd = exec.Command(testEnv.cell, append([]string{"serve", "--listen", addr, "--log-level", "info"}, args...)...)
	s.cmd.Env = serveEnv(home)
	s.cmd.Stderr = s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A graceful stop kills the daemon's VMs; QEMUs of a daemon killed on purpose (they
		// outlive it by design) are killed here, so no test leaves one behind.
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = s.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = s.cmd.Process.Kill()
				<-done
			}
		}
		for _, pid := range qemuProcesses(t, filepath.Join(home, "run")) {
			if n, err := strconv.Atoi(pid); err == nil {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.url + "/health")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cell serve did not come up:\n%s", s.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func apiKey(t testing.TB, home string) string {
	t.Helper()
	cmd := exec.Command(testEnv.cell, "apikey", "create")
	cmd.Env = serveEnv(home)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("apikey create: %v", err)
	}
	key := strings.TrimSpace(string(out))
	if !strings.HasPrefix(key, "e2b_") || len(key) != 44 {
		t.Fatalf("key %q", key)
	}
	return key
}

// createSandbox creates a sandbox from base living timeout through c, and returns its id.
func createSandbox(t *testing.T, c *client.Client, timeout time.Duration) string {
	t.Helper()
	info, err := c.Create(context.Background(), client.CreateOptions{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return info.SandboxID
}

func execOut(t *testing.T, c *client.Client, id, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := c.Connect(ctx, id)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	var out, errb bytes.Buffer
	res, err := sb.Exec(ctx, cmd, "", nil, &out, &errb)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec %q in %s: %v %+v %s", cmd, id, err, res, errb.String())
	}
	return out.String()
}

// TestServeRestart kills `cell serve` with SIGKILL while 3 sandboxes run and one of their QEMUs
// dies meanwhile: the restarted daemon re-adopts the two live ones (state intact) and reports the
// third lost and cleans it up. SIGTERM then stops everything and leaves nothing behind.
func TestServeRestart(t *testing.T) {
	d := newDaemon(t)
	s1, c := d.serve(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 3; i++ {
		info, err := c.Create(ctx, client.CreateOptions{Timeout: 10 * time.Minute})
		if err != nil {
			t.Fatalf("create: %v\n%s", err, s1.logs)
		}
		ids = append(ids, info.SandboxID)
		execOut(t, c, info.SandboxID, "echo mark-"+strconv.Itoa(i)+" > /tmp/mark")
	}
	if err := s1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = s1.cmd.Wait()
	runDir := filepath.Join(d.home, "run")
	for _, id := range ids {
		if len(qemuProcesses(t, filepath.Join(runDir, id))) != 1 {
			t.Fatalf("sandbox %s: its QEMU did not outlive the daemon", id)
		}
	}
	// A VM left without its daemon idles: envd waits for a host without keeping a core busy
	// (it used to poll its port every 10 ms: ~19% of a core per VM).
	qemu, _ := strconv.Atoi(qemuProcesses(t, filepath.Join(runDir, ids[0]))[0])
	time.Sleep(1500 * time.Millisecond) // envd polls fast for a second after its host left
	before := cpuTicks(t, qemu)
	time.Sleep(3 * time.Second)
	if used := cpuTicks(t, qemu) - before; used > 15 { // 5% of a core; 0.4% when attached and idle
		t.Errorf("a VM without its daemon used %d clock ticks of CPU in 3 s", used)
	}
	// The third one's VM dies while no daemon watches.
	for _, pid := range qemuProcesses(t, filepath.Join(runDir, ids[2])) {
		n, _ := strconv.Atoi(pid)
		_ = syscall.Kill(n, syscall.SIGKILL)
	}

	s2, c := d.serve(t)
	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, s := range list {
		listed = append(listed, s.SandboxID)
	}
	if len(listed) != 2 || listed[0] != ids[0] || listed[1] != ids[1] {
		t.Fatalf("after restart: listed %v, want %v\n%s", listed, ids[:2], s2.logs)
	}
	for i, id := range ids[:2] {
		if got := execOut(t, c, id, "cat /tmp/mark"); got != "mark-"+strconv.Itoa(i)+"\n" {
			t.Errorf("sandbox %s after re-adoption: /tmp/mark = %q", id, got)
		}
	}
	if _, err := c.Get(ctx, ids[2]); !client.IsNotFound(err) {
		t.Errorf("lost sandbox: %v", err)
	}
	if !strings.Contains(s2.logs.String(), "sandbox lost across restart") {
		t.Errorf("the lost sandbox is not reported:\n%s", s2.logs)
	}
	if _, err := os.Stat(filepath.Join(runDir, ids[2])); !os.IsNotExist(err) {
		t.Errorf("lost sandbox's directory: %v", err)
	}

	if err := s2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := s2.cmd.Wait(); err != nil {
		t.Fatalf("cell serve after SIGTERM: %v\n%s", err, s2.logs)
	}
	assertNothingLeft(t, runDir)
}

// cpuTicks is the user and system CPU time process pid has used, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	f, err := vmm.ProcStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := strconv.Atoi(f[14-3]) // utime
	s, _ := strconv.Atoi(f[15-3]) // stime
	return u + s
}

// TestServeLeaveRunning: with --leave-running a graceful stop keeps the VMs for the next daemon.
func TestServeLeaveRunning(t *testing.T) {
	d := newDaemon(t)
	s1, c := d.serve(t, "--leave-running")
	info, err := c.Create(context.Background(), client.CreateOptions{Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatalf("create: %v\n%s", err, s1.logs)
	}
	execOut(t, c, info.SandboxID, "echo kept > /tmp/kept")
	_ = s1.cmd.Process.Signal(syscall.SIGTERM)
	if err := s1.cmd.Wait(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, s1.logs)
	}
	s2, c := d.serve(t)
	if got := execOut(t, c, info.SandboxID, "cat /tmp/kept"); got != "kept\n" {
		t.Fatalf("after restart: %q", got)
	}
	if err := c.Kill(context.Background(), info.SandboxID); err != nil {
		t.Fatal(err)
	}
	_ = s2.cmd.Process.Signal(syscall.SIGTERM)
	_ = s2.cmd.Wait()
	assertNothingLeft(t, filepath.Join(d.home, "run"))
}

// TestSandboxCLI drives `cell serve` with Cell's own CLI: create, ls, exec, cp both ways, an
// interactive shell over a PTY (stdin piped), kill.
func TestSandboxCLI(t *testing.T) {
	d := newDaemon(t)
	s, _ := d.serve(t)
	run := func(stdin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(testEnv.cell, append([]string{"sandbox", "--api", s.url, "--api-key", d.key}, args...)...)
		cmd.Env = serveEnv(d.home)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if errb.Len() > 0 {
			t.Logf("%v: %s", args, errb.String())
		}
		return out.String(), code
	}
	id, code := run("", "create", "--metadata", "purpose=cli-test")
	id = strings.TrimSpace(id)
	if code != 0 || id == "" {
		t.Fatalf("create: %d %q", code, id)
	}
	if out, _ := run("", "ls"); !strings.Contains(out, id) || !strings.Contains(out, "running") {
		t.Fatalf("ls: %q", out)
	}
	if out, code := run("", "exec", id, "--", "echo", "hi;", "exit", "4"); out != "hi\n" || code != 4 {
		t.Fatalf("exec: %q %d", out, code)
	}
	if out, code := run("", "exec", "-t", id, "--", "tty;", "exit", "6"); !strings.Contains(out, "/dev/pts/") || code != 6 {
		t.Fatalf("exec -t: %q %d", out, code)
	}
	// Piped standard input reaches the command, in order and whole.
	in := strings.Repeat("0123456789", 20000)
	if out, code := run(in, "exec", id, "--", "sha256sum"); code != 0 || !strings.HasPrefix(out, fmt.Sprintf("%x ", sha256.Sum256([]byte(in)))) {
		t.Fatalf("exec with stdin: %q %d", out, code)
	}
	src := filepath.Join(t.TempDir(), "in.txt")
	if err := os.WriteFile(src, []byte("payload\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code := run("", "cp", src, id+":/home/user/in.txt"); code != 0 {
		t.Fatalf("cp in: %d", code)
	}
	if out, _ := run("", "exec", id, "--", "stat -c '%U %s' in.txt"); out != "user 8\n" {
		t.Fatalf("owner and size: %q", out)
	}
	dst := filepath.Join(t.TempDir(), "out.txt")
	if _, code := run("", "cp", id+":in.txt", dst); code != 0 {
		t.Fatalf("cp out: %d", code)
	}
	if b, _ := os.ReadFile(dst); string(b) != "payload\n" {
		t.Fatalf("round trip: %q", b)
	}
	cpDirectories(t, run, id)
	out, code := run("tty; echo marker-$((6*7)); exit 3\n", "shell", id)
	if code != 3 || !strings.Contains(out, "marker-42") || !strings.Contains(out, "/dev/pts/") {
		t.Fatalf("shell: %d %q", code, out)
	}
	if _, code := run("", "kill", id); code != 0 {
		t.Fatalf("kill: %d", code)
	}
	if out, _ := run("", "ls"); strings.Contains(out, id) {
		t.Fatalf("killed sandbox still listed: %q", out)
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	_ = s.cmd.Wait()
	assertNothingLeft(t, filepath.Join(d.home, "run"))
}

// cpDirectories: `cell sandbox cp` as docker cp: a directory tree (modes, a link) both ways, into
// an existing directory under its own name, through standard input and output; a failed copy
// out leaves the local file as it was.
func cpDirectories(t *testing.T, run func(stdin string, args ...string) (string, int), id string) {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "proj")
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{"run.sh", 0o755}, {"src/main.py", 0o644}, {"src/secret", 0o600}, {"empty/.keep", 0o644}, {"private/key", 0o400}} {
		p := filepath.Join(tree, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("content of "+f.path+"\n"), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("src/main.py", filepath.Join(tree, "main")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(tree, "private"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, code := run("", "cp", tree, id+":/home/user/"); code != 0 {
		t.Fatalf("cp a directory in: %d", code)
	}
	want := "proj/empty/.keep 644\nproj/main -> src/main.py\nproj/private/key 400\nproj/run.sh 755\nproj/src/main.py 644\nproj/src/secret 600\n"
	list := "cd /home/user && find proj -type f -printf '%p %m\\n' -o -type l -printf '%p -> %l\\n' | sort"
	if out, code := run("", "exec", id, "--", list); code != 0 || out != want {
		t.Fatalf("the tree in the sandbox:\n%s\nwant:\n%s", out, want)
	}
	if out, _ := run("", "exec", id, "--", "test -x proj/run.sh && cat proj/main"); out != "content of src/main.py\n" {
		t.Fatalf("executable and link: %q", out)
	}
	back := t.TempDir()
	// Out twice into the same directory (the second copy goes over the first's files, directories
	// and link), then once more with the sandbox path ending in "/": each time the tree, its modes
	// (a directory's too) and its link come back under the name the user gave.
	for i, src := range []string{id + ":/home/user/proj", id + ":/home/user/proj", id + ":proj/"} {
		dir := back
		if i == 2 {
			dir = t.TempDir()
		}
		if _, code := run("", "cp", src, dir); code != 0 {
			t.Fatalf("cp a directory out (%d): %d", i, code)
		}
		var got []string
		_ = filepath.Walk(filepath.Join(dir, "proj"), func(p string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if info.Mode()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(p)
				got = append(got, rel+" -> "+target)
				return nil
			}
			got = append(got, fmt.Sprintf("%s %o", rel, info.Mode().Perm()))
			return nil
		})
		if strings.Join(got, "\n")+"\n" != want {
			t.Fatalf("the tree copied back (%d):\n%s\nwant:\n%s", i, strings.Join(got, "\n"), want)
		}
		for sub, mode := range map[string]os.FileMode{"proj": 0o755, "proj/src": 0o755, "proj/private": 0o700} {
			st, err := os.Stat(filepath.Join(dir, sub))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != mode {
				t.Fatalf("%s copied back (%d): mode %o, want %o", sub, i, st.Mode().Perm(), mode)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(back, "proj", "src", "secret")); err != nil || string(b) != "content of src/secret\n" {
		t.Fatalf("a file copied back: %q %v", b, err)
	}
	// Standard input and output.
	if _, code := run("from stdin\n", "cp", "-", id+":/tmp/piped.txt"); code != 0 {
		t.Fatalf("cp - in: %d", code)
	}
	if out, code := run("", "cp", id+":/tmp/piped.txt", "-"); code != 0 || out != "from stdin\n" {
		t.Fatalf("cp out to -: %d %q", code, out)
	}
	// A copy out that fails leaves what was there.
	keep := filepath.Join(back, "keep.txt")
	if err := os.WriteFile(keep, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code := run("", "cp", id+":/no/such/file", keep); code == 0 {
		t.Fatal("cp of a missing file succeeded")
	}
	if b, _ := os.ReadFile(keep); string(b) != "precious\n" {
		t.Fatalf("a failed copy changed the destination: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(back, ".keep.txt.cell-cp-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestServeGracefulShutdown: SIGTERM stops accepting, lets an in-flight command finish, then
// kills the sandboxes (the default) and leaves nothing behind.
func TestServeGracefulShutdown(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	info, err := c.Create(ctx, client.CreateOptions{Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := c.Connect(ctx, info.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		out string
		res client.ExecResult
		err error
	}
	done := make(chan result, 1)
	started := make(chan struct{})
	go func() {
		var out bytes.Buffer
		w := &notifyWriter{w: &out, first: started}
		res, err := sb.Exec(ctx, "echo started; sleep 2; echo finished", "", nil, w, io.Discard)
		done <- result{out.String(), res, err}
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the command did not start")
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused while the in-flight call finishes.
	time.Sleep(300 * time.Millisecond)
	if _, err := c.List(ctx); err == nil {
		t.Error("a new request was accepted after SIGTERM")
	}
	r := <-done
	if r.err != nil || r.res.ExitCode != 0 || r.out != "started\nfinished\n" {
		t.Fatalf("in-flight command: %q %+v %v", r.out, r.res, r.err)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("cell serve exit: %v\n%s", err, s.logs)
	}
	assertNothingLeft(t, filepath.Join(d.home, "run"))
}

// notifyWriter closes first on its first write.
type notifyWriter struct {
	w     io.Writer
	first chan struct{}
	once  sync.Once
}

func (n *notifyWriter) Write(p []byte) (int, error) {
	n.once.Do(func() { close(n.first) })
	return n.w.Write(p)
}

// poolReady waits until the server's base pool holds n sandboxes.
func poolReady(t testing.TB, url string, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url + "/health")
		if err == nil {
			var h struct {
				Pools map[string]struct{ Ready, Size int }
			}
			err = json.NewDecoder(resp.Body).Decode(&h)
			_ = resp.Body.Close()
			if err == nil && h.Pools["base"].Ready >= n {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the pool did not fill to %d", n)
}

// TestServePool: with --pool base=2, creates are served from warmed sandboxes, each handed out
// once, each with its own identity and settings; the pool refills, and shutdown drains it.
func TestServePool(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t, "--pool", "base=2")
	ctx := context.Background()
	poolReady(t, s.url, 2)
	seen := map[string]bool{}
	for i := 0; i < 3; i++ { // the third may come from the refill or be restored on demand
		// The first has no variables of its own (a pool hit needs no /init then); the second
		// tries to set E2B's own, which win.
		envs := map[string]string{"N": strconv.Itoa(i)}
		switch i {
		case 0:
			envs = nil
		case 1:
			envs["E2B_SANDBOX_ID"], envs["E2B_TEMPLATE_ID"] = "spoofed", "spoofed"
		}
		info, err := c.Create(ctx, client.CreateOptions{Timeout: time.Minute, Envs: envs})
		if err != nil {
			t.Fatal(err)
		}
		if seen[info.SandboxID] {
			t.Fatalf("sandbox %s handed out twice", info.SandboxID)
		}
		seen[info.SandboxID] = true
		out := execOut(t, c, info.SandboxID, "echo ${N:-none} $(hostname) $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' ') $E2B_SANDBOX $E2B_SANDBOX_ID $E2B_TEMPLATE_ID")
		f := strings.Fields(out)
		wantN := strconv.Itoa(i)
		if i == 0 {
			wantN = "none"
		}
		if len(f) != 6 || f[0] != wantN || f[1] != info.SandboxID || f[3] != "true" || f[4] != info.SandboxID || f[5] != "base" {
			t.Fatalf("sandbox %d: %q", i, out)
		}
		if seen[f[2]] {
			t.Fatalf("random bytes repeated: %s", f[2])
		}
		seen[f[2]] = true
	}
	poolReady(t, s.url, 2)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("shutdown: %v\n%s", err, s.logs)
	}
	assertNothingLeft(t, filepath.Join(d.home, "run"))
}

// TestPauseResume: pause/resume cycles keep every write and a running process's memory (a counter
// that keeps counting); a paused sandbox survives a daemon restart; a pause without memory keeps
// the files and boots fresh.
func TestPauseResume(t *testing.T) {
	cycles := 100
	if s := os.Getenv("CELL_PAUSE_CYCLES"); s != "" {
		cycles, _ = strconv.Atoi(s)
	}
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	id := createSandbox(t, c, 30*time.Minute)
	// The counter lives only in the process's memory; it writes it out when asked (SIGUSR1).
	execOut(t, c, id, `cat > /tmp/counter.py <<'PY'
import signal, time
n = 0
def dump(*_):
    open('/tmp/count', 'w').write(str(n))
signal.signal(signal.SIGUSR1, dump)
dump()
while True:
    n += 1
    time.sleep(0.01)
PY
nohup python3 /tmp/counter.py >/dev/null 2>&1 &
for i in $(seq 100); do [ -e /tmp/count ] && break; sleep 0.1; done
echo started`)
	count := func() int {
		out := execOut(t, c, id, `pkill -USR1 -f '^python3 /tmp/counter'; sleep 0.3; cat /tmp/count`)
		n, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("counter: %q", out)
		}
		return n
	}
	last := count()
	for i := 0; i < cycles; i++ {
		execOut(t, c, id, fmt.Sprintf("echo %d > ~/cycle-%d.txt && sync", i, i))
		if err := c.Pause(ctx, id, true); err != nil {
			t.Fatalf("cycle %d: pause: %v\n%s", i, err, s.logs)
		}
		if got, err := c.Get(ctx, id); err != nil || got.State != "paused" {
			t.Fatalf("cycle %d: after pause: %+v %v", i, got, err)
		}
		if err := c.Pause(ctx, id, true); err == nil || !strings.Contains(err.Error(), "409") {
			t.Fatalf("cycle %d: pausing twice: %v", i, err)
		}
		if err := c.Resume(ctx, id, 30*time.Minute); err != nil {
			t.Fatalf("cycle %d: resume: %v\n%s", i, err, s.logs)
		}
		files := execOut(t, c, id, "cat ~/cycle-*.txt | sort -n | tr '\\n' ' '")
		var want []string
		for j := 0; j <= i; j++ {
			want = append(want, strconv.Itoa(j))
		}
		sortNumeric(want)
		if strings.TrimSpace(files) != strings.Join(want, " ") {
			t.Fatalf("cycle %d: files %q, want %q", i, files, strings.Join(want, " "))
		}
		n := count()
		if n <= last {
			t.Fatalf("cycle %d: counter %d did not grow past %d: the process lost its memory", i, n, last)
		}
		last = n
	}
	// Each resume took the disk by reference, adding a layer; the chain is flattened in the
	// background, so the run directory holds a few layers, not one per cycle.
	if cycles > 6 {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			l, _ := filepath.Glob(filepath.Join(d.home, "run", id, "layer-*.qcow2"))
			if len(l) <= 6 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d layers after %d resumes: the chain is never flattened\n%s", len(l), cycles, s.logs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// A restored sandbox is saved from its mapping (vmm's delta.go), not through QEMU's
	// migration of all of its RAM.
	if strings.Contains(s.logs.String(), "through the migration stream instead") {
		t.Fatalf("pauses fell back to the migration stream:\n%s", s.logs)
	}

	// Paused across a daemon restart (a graceful stop kills running sandboxes, not paused ones).
	if err := c.Pause(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	s2, c := d.serve(t)
	if got, err := c.Get(ctx, id); err != nil || got.State != "paused" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	// Paused for seconds: the guest wakes with the time it was saved at, and the resume's
	// handshake (there is no /init) must set its clock.
	time.Sleep(3 * time.Second)
	if err := c.Resume(ctx, id, 30*time.Minute); err != nil {
		t.Fatalf("resume after restart: %v\n%s", err, s2.logs)
	}
	host := float64(time.Now().UnixNano()) / 1e9
	guest, err := strconv.ParseFloat(strings.TrimSpace(execOut(t, c, id, "date +%s.%N")), 64)
	if err != nil {
		t.Fatal(err)
	}
	if d := guest - host; d < -1 || d > 1 {
		t.Fatalf("after a resume the guest's clock is %.3f s off the host's", d)
	}
	if n := count(); n <= last {
		t.Fatalf("after restart: counter %d <= %d", n, last)
	}

	// Without memory: files stay, processes do not.
	if err := c.Pause(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx, id, 30*time.Minute); err != nil {
		t.Fatalf("resume without memory: %v\n%s", err, s2.logs)
	}
	if out := execOut(t, c, id, "cat ~/cycle-0.txt; pgrep -f '^python3 /tmp/counter' || echo gone"); out != "0\ngone\n" {
		t.Fatalf("after a pause without memory: %q", out)
	}
	if err := c.Kill(ctx, id); err != nil {
		t.Fatal(err)
	}
	_ = s2.cmd.Process.Signal(syscall.SIGTERM)
	_ = s2.cmd.Wait()
	assertNothingLeft(t, filepath.Join(d.home, "run"))
	if des, _ := os.ReadDir(filepath.Join(d.home, "paused")); len(des) != 0 {
		t.Fatalf("paused state left behind: %v", des)
	}
}

func sortNumeric(s []string) {
	sort.Slice(s, func(i, j int) bool {
		a, _ := strconv.Atoi(s[i])
		b, _ := strconv.Atoi(s[j])
		return a < b
	})
}

// TestServePauseOnShutdown: with --pause-on-shutdown a graceful stop pauses running sandboxes; the
// next cell serve resumes them with their files.
func TestServePauseOnShutdown(t *testing.T) {
	d := newDaemon(t)
	s1, c := d.serve(t, "--pause-on-shutdown")
	ctx := context.Background()
	info, err := c.Create(ctx, client.CreateOptions{Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, c, info.SandboxID, "echo kept > ~/kept.txt")
	_ = s1.cmd.Process.Signal(syscall.SIGTERM)
	if err := s1.cmd.Wait(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, s1.logs)
	}
	assertNothingLeft(t, filepath.Join(d.home, "run"))
	_, c = d.serve(t)
	if got, err := c.Get(ctx, info.SandboxID); err != nil || got.State != "paused" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	if err := c.Resume(ctx, info.SandboxID, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := execOut(t, c, info.SandboxID, "cat ~/kept.txt"); got != "kept\n" {
		t.Fatalf("after resume: %q", got)
	}
}

// TestCreateLargeEnvVars: env vars as large as the API takes (a body just under 1 MiB) reach the
// sandbox. The host encodes them again for envd's /init: '<' must not become a six-byte escape,
// and envd must take what the host sends (U+2028 and U+2029 are always escaped: 3 bytes become 6).
func TestCreateLargeEnvVars(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	envs := map[string]string{}
	for i := range 60 {
		envs[fmt.Sprintf("LT%d", i)] = strings.Repeat("<", 8000)
		envs[fmt.Sprintf("LS%d", i)] = strings.Repeat("\u2028", 2600)
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]any{"templateID": "base", "timeout": 600, "envVars": envs}); err != nil {
		t.Fatal(err)
	}
	// A client may send U+2028 as it is (valid JSON), 3 bytes where Go writes a 6-byte escape.
	raw := bytes.ReplaceAll(body.Bytes(), []byte(`\u2028`), []byte("\u2028"))
	body.Reset()
	body.Write(raw)
	if body.Len() >= 1<<20 {
		t.Fatalf("test body is %d bytes, over the API's limit", body.Len())
	}
	req, _ := http.NewRequest("POST", s.url+"/sandboxes", &body)
	req.Header.Set("X-API-KEY", d.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	var created struct{ SandboxID string }
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &created) != nil {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	defer func() { _ = c.Kill(context.Background(), created.SandboxID) }()
	if got := execOut(t, c, created.SandboxID, `echo ${#LT59} ${#LS59} "${LT0:0:3}"`); got != "8000 2600 <<<\n" {
		t.Fatalf("env in the sandbox: %q", got)
	}
}
