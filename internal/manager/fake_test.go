package manager

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
)

// fakeRuntime is the VM boundary broken on purpose: its instances live in memory, and a test
// tells its boots, resumes, adoptions and pauses to fail, block or lose their VM midway (the
// hooks; nil: they succeed at once). Everything on the manager's side of it is real: the store,
// the paused sandboxes' directories (a pause publishes a generation sandbox.CurrentPaused reads).
type fakeRuntime struct {
	mu     sync.Mutex
	vms    []*fakeVM
	pid    int
	boot   func(ctx context.Context, opts sandbox.Options) error
	resume func(ctx context.Context, dir string) error
	adopt  func(id string, pid int) error
	// pause replaces a pause's default (publish, then the VM's QEMU goes) for every VM.
	pause  func(ctx context.Context, vm *fakeVM, dir string, memory bool) error
	adopts []string // the ids Adopt was asked for
}

// fakeVM is one instance: a VM that runs until it dies, is closed, or is saved by a pause.
type fakeVM struct {
	rt     *fakeRuntime
	id     string
	pid    int
	exited chan struct{}

	mu       sync.Mutex
	reason   string
	closed   bool
	detached bool
	token    string
	init     []envd.InitRequest
	paused   []bool // the memory flag of each pause asked for
}

// hooks returns the runtime's hooks (a test may set them while the manager runs).
func (r *fakeRuntime) hooks() (boot func(context.Context, sandbox.Options) error, resume func(context.Context, string) error,
	adopt func(string, int) error, pause func(context.Context, *fakeVM, string, bool) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.boot, r.resume, r.adopt, r.pause
}

func (r *fakeRuntime) set(f func(r *fakeRuntime)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func (r *fakeRuntime) newVM(id string) *fakeVM {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pid++
	vm := &fakeVM{rt: r, id: id, pid: 100000 + r.pid, exited: make(chan struct{})}
	r.vms = append(r.vms, vm)
	return vm
}

// vm returns the newest instance of sandbox id.
func (r *fakeRuntime) vm(t *testing.T, id string) *fakeVM {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.vms) - 1; i >= 0; i-- {
		if r.vms[i].id == id {
			return r.vms[i]
		}
	}
	t.Fatalf("no VM of sandbox %s", id)
	return nil
}

func (r *fakeRuntime) Boot(ctx context.Context, opts sandbox.Options) (Instance, error) {
	if boot, _, _, _ := r.hooks(); boot != nil {
		if err := boot(ctx, opts); err != nil {
			return nil, err
		}
	}
	vm := r.newVM(opts.ID)
	if opts.Init != nil && opts.Init.AccessToken != nil {
		vm.SetToken(*opts.Init.AccessToken)
	}
	return vm, nil
}

func (r *fakeRuntime) Adopt(_ context.Context, id string, pid int, _ uint64, _ *netstack.Rules) (Instance, error) {
	r.mu.Lock()
	r.adopts = append(r.adopts, id)
	r.mu.Unlock()
	if _, _, adopt, _ := r.hooks(); adopt != nil {
		if err := adopt(id, pid); err != nil {
			return nil, err
		}
	}
	vm := r.newVM(id)
	vm.pid = pid
	return vm, nil
}

func (r *fakeRuntime) Resume(ctx context.Context, dir string, init envd.InitRequest, _ *netstack.Rules, _ bool) (Instance, error) {
	_, meta, err := sandbox.CurrentPaused(dir)
	if err != nil {
		return nil, err
	}
	if _, resume, _, _ := r.hooks(); resume != nil {
		if err := resume(ctx, dir); err != nil {
			return nil, err
		}
	}
	vm := r.newVM(meta.ID)
	if init.AccessToken != nil {
		vm.SetToken(*init.AccessToken)
	}
	return vm, nil
}

func (r *fakeRuntime) Snapshot(context.Context, Instance, string, string, string, string, bool) (*sandbox.Template, error) {
	return nil, errors.New("no snapshots in this fake")
}

// publishPaused saves a generation of sandbox id under dir as a crash-interrupted pause leaves
// it (its disk taken into a staging directory), completed by the sandbox package.
func publishPaused(dir, id string) error {
	staging := filepath.Join(dir, ".staging-fake")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(staging, "disk.qcow2"), fakeDisk, 0o600); err != nil {
		return err
	}
	ok, err := sandbox.FinishPause(dir, id, sandbox.DefaultMemoryMiB, sandbox.DefaultCPUs)
	if err == nil && !ok {
		err = errors.New("no complete generation")
	}
	return err
}

// die ends the VM's QEMU (once) with reason.
func (v *fakeVM) die(reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	select {
	case <-v.exited:
	default:
		v.reason = reason
		close(v.exited)
	}
}

func (v *fakeVM) isClosed() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.closed
}

func (v *fakeVM) isDetached() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.detached
}

func (v *fakeVM) alive() bool {
	select {
	case <-v.exited:
		return false
	default:
		return true
	}
}

func (v *fakeVM) PID() (int, uint64)      { return v.pid, 7 }
func (v *fakeVM) Exited() <-chan struct{} { return v.exited }

func (v *fakeVM) ExitReason() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.reason
}

// Pause is a real pause's outcome by default: a published generation, and the VM gone.
func (v *fakeVM) Pause(ctx context.Context, dir string, memory bool) (sandbox.PausedMeta, error) {
	v.mu.Lock()
	v.paused = append(v.paused, memory)
	v.mu.Unlock()
	if _, _, _, pause := v.rt.hooks(); pause != nil {
		return sandbox.PausedMeta{}, pause(ctx, v, dir, memory)
	}
	if err := publishPaused(dir, v.id); err != nil {
		return sandbox.PausedMeta{}, err
	}
	v.die("killed: saved by a pause")
	return sandbox.PausedMeta{ID: v.id, Memory: memory}, nil
}

func (v *fakeVM) Close() error {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	v.die("killed by Close")
	return nil
}

func (v *fakeVM) Detach() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.detached = true
}

func (v *fakeVM) Init(_ context.Context, req envd.InitRequest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.init = append(v.init, req)
	if req.AccessToken != nil {
		v.token = *req.AccessToken
	}
	return nil
}

func (v *fakeVM) SetToken(token string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.token = token
}

func (v *fakeVM) getToken() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.token
}

func (v *fakeVM) HTTP() *http.Client { return &http.Client{Transport: unreachableEnvd{}} }

func (v *fakeVM) Run(context.Context, sandbox.RunSpec, io.Reader, io.Writer, io.Writer, func(uint32)) (sandbox.Result, error) {
	return sandbox.Result{}, nil
}

func (v *fakeVM) DialLocal(context.Context, uint16) (net.Conn, error) {
	return nil, errors.New("no guest in this fake")
}

func (v *fakeVM) Network() *netstack.Network { return nil }

func (v *fakeVM) OpenConsoleLog() (*vmm.ConsoleLog, error) { return nil, os.ErrNotExist }

type unreachableEnvd struct{}

func (unreachableEnvd) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no envd in this fake")
}

// harness is a manager over a real store in a temporary directory and a fakeRuntime.
type harness struct {
	t     *testing.T
	rt    *fakeRuntime
	st    *store.Store
	cfg   Config
	m     *Manager
	ctx   context.Context
	team  string
	short time.Duration // a timeout that passes within a test
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "cell.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h := &harness{t: t, rt: &fakeRuntime{}, st: st, ctx: ctx, team: "team-a", short: 50 * time.Millisecond}
	h.cfg = Config{Runtime: h.rt, Templates: &sandbox.TemplateSet{}, Store: st, RunDir: t.TempDir(), Home: t.TempDir()}
	h.m = h.open()
	return h
}

// open starts a manager over the harness's store and directories (as a restarted daemon does:
// call Recover next), shut down (killing what still runs) when the test ends.
func (h *harness) open() *Manager {
	h.t.Helper()
	m, err := New(h.ctx, h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { m.Shutdown(context.Background(), Kill) })
	return m
}

func (h *harness) create(req CreateRequest) Info {
	h.t.Helper()
	if req.Team == "" {
		req.Team = h.team
	}
	if req.Timeout == 0 {
		req.Timeout = time.Hour
	}
	info, err := h.m.Create(h.ctx, req)
	if err != nil {
		h.t.Fatalf("create: %v", err)
	}
	return info
}

// record is sandbox id's record in the store.
func (h *harness) record(id string) store.Sandbox {
	h.t.Helper()
	all, err := h.st.Sandboxes(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, r := range all {
		if r.ID == id {
			return r
		}
	}
	h.t.Fatalf("no record of sandbox %s", id)
	return store.Sandbox{}
}

// waitRecord waits (up to 5 s) until sandbox id's record is in state, and returns it.
func (h *harness) waitRecord(id, state string) store.Sandbox {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := h.record(id)
		if r.State == state {
			return r
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("sandbox %s is %s (%q), want %s", id, r.State, r.Reason, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// want checks sandbox id's record: its state and reason.
func (h *harness) want(id, state, reason string) {
	h.t.Helper()
	r := h.record(id)
	if r.State != state || r.Reason != reason {
		h.t.Errorf("sandbox %s is %s (%q), want %s (%q)", id, r.State, r.Reason, state, reason)
	}
}

func (h *harness) pausedDir(id string) string {
	return datadir.Layout{Home: h.cfg.Home}.PausedSandbox(id)
}

// hasPaused reports whether sandbox id has a saved generation.
func (h *harness) hasPaused(id string) bool {
	_, _, err := sandbox.CurrentPaused(h.pausedDir(id))
	return err == nil
}

// gate blocks a hook until the test opens it, and says when the hook got there.
type gate struct{ reached, open chan struct{} }

func newGate() gate { return gate{reached: make(chan struct{}), open: make(chan struct{})} }

// wait is the hook's side: it says it got there and waits to be let through.
func (g gate) wait() {
	close(g.reached)
	<-g.open
}

// await is the test's side: it waits until the hook got there (up to 5 s).
func (g gate) await(t *testing.T) {
	t.Helper()
	select {
	case <-g.reached:
	case <-time.After(5 * time.Second):
		t.Fatal("the runtime was never reached")
	}
}

// fakeDisk stands for a VM's disk: a qcow2 header without a backing file (the pause code reads
// a disk's chain of layers from its header).
var fakeDisk = append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 16)...)
