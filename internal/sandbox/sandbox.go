package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
	"github.com/cellhq/cell/pkg/envd/command"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// envdURL is the base URL of envd over a channel (the host part is not used for routing).
const envdURL = "http://envd"

// Defaults for a sandbox.
const (
	DefaultMemoryMiB = 512
	DefaultCPUs      = 2
	DefaultUser      = "user"
	// DefaultDiskMiB is the size of the image's root file system, and so the smallest disk a
	// sandbox can have (ext4 cannot shrink under a running guest).
	DefaultDiskMiB = image.DiskSizeBytes / vmm.MiB
	// MaxDiskMiB bounds a sandbox's disk (the file system grows to it online, in the guest).
	MaxDiskMiB = 256 << 10
)

// Runtime boots sandboxes on this host. Sandboxes of a template in its TemplateSet are restored
// from that snapshot instead of booted.
type Runtime struct {
	Host  *vmm.Host
	Image image.Image
	Accel vmm.Accel
	Net   NetEnv
	Log   *slog.Logger
	TemplateSet
}

// TemplateSet holds memory snapshots by template name. The zero value is empty and ready; it is
// safe for concurrent use.
type TemplateSet struct {
	mu        sync.RWMutex
	templates map[string]*Template
}

// SetTemplate makes sandboxes of name restore from t.
func (s *TemplateSet) SetTemplate(name string, t *Template) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.templates == nil {
		s.templates = map[string]*Template{}
	}
	s.templates[name] = t
}

// Template returns the snapshot sandboxes of name restore from (nil: they boot).
func (s *TemplateSet) Template(name string) *Template {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.templates[name]
}

// Templates returns every snapshot sandboxes can be restored from.
func (s *TemplateSet) Templates() []*Template {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Template, 0, len(s.templates))
	for _, t := range s.templates {
		out = append(out, t)
	}
	return out
}

// DropTemplate forgets name's snapshot.
func (s *TemplateSet) DropTemplate(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.templates, name)
}

// Template is a memory snapshot of a booted, warmed-up sandbox: its disk layer, its RAM file and
// device state, and the machine it must be restored into.
type Template struct {
	Name string
	Dir  string
	Disk string // qcow2 layer, backed by the image's base disk
	// DiskBytes is the layer's size: the guest's file system fills it, so a sandbox restored
	// from the template has at least this disk.
	DiskBytes  uint64
	Snapshot   vmm.Snapshot
	MemoryMiB  int
	CPUs       int
	KernelArgs []string
	// Full snapshots are of a running sandbox (Snapshot says where their RAM is).
	Full bool
	// Team and Source are set for snapshots of sandboxes: who owns it and what it was taken of.
	Team, Source string
	Fork         bool   // taken for a fork: removed once no fork depends on it
	Label        string // the name a snapshot was given
	// Layer is set on a template build's layers: what the build keeps beside the layer (see
	// Runtime.SaveLayer). Layers are not a team's snapshots.
	Layer []byte
	token string            // envd's access token inside the snapshot
	sums  map[string]string // a layer's files' digests, by file name
}

// Options describe one sandbox.
type Options struct {
	ID   string // chosen by Boot when empty
	Cold bool   // boot even when a template snapshot exists
	// Init, when set, goes to envd with the channel's handshake (with the identity initBody
	// always adds); a restored sandbox gets an identity init even without it.
	Init       *envd.InitRequest
	Template   string
	MemoryMiB  int
	CPUs       int
	KernelArgs []string // for tests and debugging
	// DiskMiB is the size of the sandbox's disk: the most it can write on the host, and the size
	// of its root file system (grown in the guest when it is larger than the template's disk).
	// 0: the template's.
	DiskMiB int
	// Net is the sandbox's egress policy (nil: DefaultRules).
	Net *netstack.Rules

	memPath string // RAM in this shared file (a template being built)
	// baseDisk, set on a cold boot, replaces Cell's base image with another root file system
	// (an OCI image's, see BuildMachines.Boot).
	baseDisk string
}

// Sandbox is a running VM with envd ready. Close releases it.
type Sandbox struct {
	ID       string
	VM       *vmm.VM
	Process  processconnect.ProcessClient
	BootTime time.Duration
	Restored bool // started from a template snapshot
	Net      *netstack.Network
	http     *http.Client // raw: for the proxy, whose clients bring their own token
	own      *http.Client // with envd's access token: for Cell's own calls
	token    atomic.Pointer[string]
	log      *slog.Logger
}

// ErrVMExited is wrapped when the sandbox's VM ended while a call was waiting on it.
var ErrVMExited = errors.New("sandbox VM exited unexpectedly")

// Boot starts a sandbox and waits until envd answers.
func (r *Runtime) Boot(ctx context.Context, opts Options) (*Sandbox, error) {
	if opts.Template == "" {
		opts.Template = "base"
	}
	if err := ids.Validate("template", opts.Template); err != nil {
		return nil, err
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = DefaultMemoryMiB
	}
	if opts.CPUs == 0 {
		opts.CPUs = DefaultCPUs
	}
	start := time.Now()
	id := opts.ID
	if id == "" {
		id = ids.NewSandboxID()
	}
	spec := vmm.Spec{
		ID: id, Kernel: r.Image.Kernel, BaseDisk: r.Image.Disk, MemoryMiB: opts.MemoryMiB, CPUs: opts.CPUs,
		Accel: r.Accel, KernelArgs: append(r.kernelArgs(id), opts.KernelArgs...),
		MemPath: opts.memPath, MemShared: opts.memPath != "",
	}
	what := "booting sandbox"
	t := r.Template(opts.Template)
	if opts.baseDisk != "" {
		if !opts.Cold {
			return nil, fmt.Errorf("booting sandbox: another base disk needs a cold boot")
		}
		spec.BaseDisk, what = opts.baseDisk, "booting sandbox from the disk "+opts.baseDisk
	}
	if t != nil && !opts.Cold && len(opts.KernelArgs) == 0 &&
		opts.MemoryMiB == t.MemoryMiB && opts.CPUs == t.CPUs && opts.memPath == "" {
		snap := t.Snapshot
		spec.BaseDisk, spec.KernelArgs, spec.Restore = t.Disk, t.KernelArgs, &snap
		what = "restoring sandbox from template " + t.Name
	} else if opts.Template != "base" {
		return nil, fmt.Errorf("template %q: not found or made for another machine size", opts.Template)
	}
	from := uint64(image.DiskSizeBytes)
	switch {
	case spec.Restore != nil:
		from = t.DiskBytes
	case opts.baseDisk != "":
		size, err := vmm.DiskVirtualSize(opts.baseDisk)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		from = size
	}
	if opts.DiskMiB != 0 {
		if opts.DiskMiB < 0 || opts.DiskMiB > MaxDiskMiB || uint64(opts.DiskMiB)*vmm.MiB < from {
			return nil, fmt.Errorf("disk size: %d MiB is outside %d..%d MiB", opts.DiskMiB, from/vmm.MiB, MaxDiskMiB)
		}
		spec.DiskBytes = uint64(opts.DiskMiB) * vmm.MiB
	}
	var token *string
	if spec.Restore != nil || opts.Init != nil {
		// A clone wakes up as its template: its own name, variables and token (and, with every
		// handshake, fresh randomness and the time) come with the channel's handshake, so they
		// are settled before anything else runs in it, without a request of their own.
		var req envd.InitRequest
		if opts.Init != nil {
			req = *opts.Init
		}
		if req.TemplateID == nil { // commands see it as E2B_TEMPLATE_ID
			tpl := opts.Template
			req.TemplateID = &tpl
		}
		req.Timestamp = nil // the handshake's own clock is the newer
		var err error
		if spec.Init, err = initBody(id, req); err != nil {
			return nil, err
		}
		token = req.AccessToken
	}
	vm, err := r.Host.Start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if token == nil && spec.Restore != nil && t.token != "" {
		token = &t.token // the snapshot's envd enforces its source's token unless told another
	}
	sb := newSandbox(vm, r.Log)
	sb.Restored = spec.Restore != nil
	if token != nil {
		sb.SetToken(*token)
	}
	if spec.DiskBytes > from {
		if err := sb.growFS(ctx, spec.DiskBytes); err != nil {
			_ = sb.Close()
			return nil, err
		}
	}
	if err := r.attachNet(sb, opts.Net); err != nil {
		_ = sb.Close()
		return nil, err
	}
	sb.BootTime = time.Since(start)
	return sb, nil
}

func newSandbox(vm *vmm.VM, log *slog.Logger) *Sandbox {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	raw := sessionTransport{vm: vm}
	sb := &Sandbox{ID: vm.ID, VM: vm, http: &http.Client{Transport: raw}, log: log}
	// Cell's own calls carry envd's access token once one is set; the proxy's (HTTP()) do not.
	own := &http.Client{Transport: tokenTransport{base: raw, token: &sb.token}}
	sb.own = own
	sb.Process = processconnect.NewProcessClient(own, envdURL)
	return sb
}

// sessionTransport sends each request over the VM's current session with envd, which the VM
// makes again when it is gone (an adopted VM's first, the next after a pause that failed).
type sessionTransport struct{ vm *vmm.VM }

func (t sessionTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h, err := t.vm.Session(r.Context())
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close() // a RoundTripper closes the body, even on error
		}
		return nil, err
	}
	return h.HTTPClient().Transport.RoundTrip(r)
}

// tokenTransport adds envd's access token, when there is one, to each request.
type tokenTransport struct {
	base  http.RoundTripper
	token *atomic.Pointer[string]
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if tok := t.token.Load(); tok != nil && *tok != "" && r.Header.Get("X-Access-Token") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("X-Access-Token", *tok)
	}
	return t.base.RoundTrip(r)
}

// Adopt takes over a sandbox an earlier process booted detached (see vmm.Host.Adopt).
// The sandbox gets a new network under rules: connections open before are gone.
func (r *Runtime) Adopt(ctx context.Context, id string, pid int, startTicks uint64, rules *netstack.Rules) (*Sandbox, error) {
	vm, err := r.Host.Adopt(ctx, id, pid, startTicks)
	if err != nil {
		return nil, err
	}
	sb := newSandbox(vm, r.Log)
	if err := r.attachNet(sb, rules); err != nil {
		vm.Detach()
		return nil, err
	}
	return sb, nil
}

// initBody is the /init body envd gets for the sandbox id: req, with the sandbox's host name and
// its id (which commands see as E2B_SANDBOX_ID).
func initBody(id string, req envd.InitRequest) ([]byte, error) {
	hostname, sandboxID := id, id
	req.Hostname, req.SandboxID = &hostname, &sandboxID
	// No HTML escaping: an env var full of '<' would grow six-fold and could outgrow what envd
	// accepts (channel.MaxInit).
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(req); err != nil {
		return nil, fmt.Errorf("encoding the sandbox's init: %w", err)
	}
	return body.Bytes(), nil
}

// Init sends envd a request to /init: req as given, plus the sandbox's host name and the host's
// clock, for a sandbox that is already running (a new sandbox gets its init with the channel's
// handshake, in Boot).
func (s *Sandbox) Init(ctx context.Context, req envd.InitRequest) error {
	now := time.Now()
	req.Timestamp = &now
	body, err := initBody(s.ID, req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, envdURL+"/init", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := s.own.Do(hreq)
	if err != nil {
		return fmt.Errorf("envd /init: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("envd /init: HTTP %d: %s", resp.StatusCode, msg)
	}
	if req.AccessToken != nil {
		tok := *req.AccessToken
		s.token.Store(&tok)
	}
	return nil
}

// SetToken tells the sandbox envd's access token (after Adopt: the daemon that set it is gone).
func (s *Sandbox) SetToken(tok string) { s.token.Store(&tok) }

// HTTP returns a client whose requests reach envd (any URL host; by convention http://envd).
func (s *Sandbox) HTTP() *http.Client { return s.http }

// EnvdURL is the base URL for HTTP().
const EnvdURL = envdURL

// Detach lets go of the VM, which keeps running for another process to adopt; its network
// (which lives in this process) ends, and the adopter makes a new one.
func (s *Sandbox) Detach() {
	s.VM.Detach()
	if s.Net != nil {
		_ = s.Net.Close()
	}
}

// Close stops the VM and releases everything the sandbox holds. It is idempotent.
func (s *Sandbox) Close() error {
	err := s.VM.Close()
	if s.Net != nil {
		_ = s.Net.Close()
	}
	return err
}

// Release is Close for a sandbox whose VM is stopped and saved (vmm.VM.Release): its QEMU is
// killed at once and the VM's teardown finishes in the background.
func (s *Sandbox) Release() {
	s.VM.Release()
	if s.Net != nil {
		_ = s.Net.Close()
	}
}

// guard returns a context that is cancelled, with a cause naming the VM's exit, when the VM dies.
func (s *Sandbox) guard(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	go func() {
		select {
		case <-s.VM.Exited():
			cancel(fmt.Errorf("%w: qemu %s", ErrVMExited, s.VM.ExitReason()))
		case <-stop:
		case <-ctx.Done():
		}
	}()
	return ctx, func() { close(stop); cancel(nil) }
}

// explain turns an RPC error into the VM's death when that is what happened.
func (s *Sandbox) explain(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrVMExited) {
		return cause
	}
	select {
	case <-s.VM.Exited():
		return fmt.Errorf("%w: qemu %s", ErrVMExited, s.VM.ExitReason())
	case <-time.After(100 * time.Millisecond):
		// The connection may have broken just before QEMU's exit is noticed.
	}
	select {
	case <-s.VM.Exited():
		return fmt.Errorf("%w: qemu %s", ErrVMExited, s.VM.ExitReason())
	default:
	}
	return err
}

// RunSpec is one command (User "": DefaultUser).
type RunSpec = command.Spec

// trailerWait bounds how long Run waits, after a command's end event, for the end of its stream
// (which carries envd's measure of the command).
const trailerWait = 100 * time.Millisecond

// Result is how a command ended.
type Result = command.Result

// Run starts a command, copies stdin (if not nil) to it, streams its output to stdout and stderr
// as it is produced, and returns how it ended. onStart, if set, is called with the pid. An end
// envd could not wait for (status "error") is an error.
func (s *Sandbox) Run(ctx context.Context, spec RunSpec, stdin io.Reader, stdout, stderr io.Writer, onStart func(pid uint32)) (Result, error) {
	ctx, cancel := s.guard(ctx)
	defer cancel()
	if spec.User == "" {
		spec.User = DefaultUser
	}
	res, err := command.Run(ctx, s.Process, spec, stdin, stdout, stderr, command.Options{OnStart: onStart, TrailerWait: trailerWait})
	switch {
	case errors.Is(err, command.ErrOutput):
		return res, err
	case err != nil:
		return res, s.explain(ctx, err)
	case res.Status == "error": // envd could not wait for it; a non-zero exit also has an error
		return res, fmt.Errorf("command failed: %s", res.Error)
	}
	return res, nil
}

// Signal sends sig to the process (and its process group) pid.
func (s *Sandbox) Signal(ctx context.Context, pid uint32, sig pb.Signal) error {
	_, err := s.Process.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: sig}))
	return err
}

// postEnvd sends an empty POST to one of envd's own (Cell-specific) paths and returns the status.
func (s *Sandbox) postEnvd(ctx context.Context, path string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, envdURL+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.own.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// Sync flushes the guest's file systems. An envd older than SyncPath (a VM adopted from an
// earlier Cell) gets /bin/sync run instead.
func (s *Sandbox) Sync(ctx context.Context) error {
	status, err := s.postEnvd(ctx, envd.SyncPath)
	switch {
	case err != nil:
		return fmt.Errorf("asking envd to sync: %w", err)
	case status == http.StatusNoContent:
		return nil
	case status == http.StatusNotFound || status == http.StatusMethodNotAllowed:
		res, err := s.Run(ctx, RunSpec{Cmd: "/bin/sync", User: "root"}, nil, io.Discard, io.Discard, nil)
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("/bin/sync exited %d", res.ExitCode)
		}
		return err
	}
	return fmt.Errorf("asking envd to sync: HTTP %d", status)
}

// PowerOff asks envd to stop everything and power the VM off, and waits for QEMU to exit.
func (s *Sandbox) PowerOff(ctx context.Context) error {
	status, err := s.postEnvd(ctx, envd.PowerOffPath)
	if err != nil {
		return fmt.Errorf("asking envd to power off: %w", err)
	}
	if status != http.StatusAccepted {
		return fmt.Errorf("asking envd to power off: HTTP %d", status)
	}
	select {
	case <-s.VM.Exited():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the VM to power off: %w", ctx.Err())
	}
}
