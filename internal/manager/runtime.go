package manager

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
)

// Runtime is what the manager needs of the sandbox runtime: VMs started, adopted, resumed and
// snapshotted. SandboxRuntime adapts the real one (QEMU); tests fake it.
type Runtime interface {
	Boot(ctx context.Context, opts sandbox.Options) (Instance, error)
	Adopt(ctx context.Context, id string, pid int, startTicks uint64, rules *netstack.Rules) (Instance, error)
	Resume(ctx context.Context, dir string, init envd.InitRequest, rules *netstack.Rules, memory bool) (Instance, error)
	Snapshot(ctx context.Context, sb Instance, home, name, label, team string, fork bool) (*sandbox.Template, error)
}

// Instance is one running sandbox as the manager drives it (a *sandbox.Sandbox is one).
type Instance interface {
	// PID names the VM's process, for the next daemon to adopt it.
	PID() (pid int, startTicks uint64)
	// Exited is closed when the VM has died (or was stopped); ExitReason then says how.
	Exited() <-chan struct{}
	ExitReason() string
	// Pause saves the sandbox under dir and stops its VM (see sandbox.Sandbox.Pause for what
	// its error says about the VM: sandbox.ErrPauseUndone, or stopped).
	Pause(ctx context.Context, dir string, memory bool) (sandbox.PausedMeta, error)
	// Close stops the VM; Detach lets go of it, running, for another process to adopt.
	Close() error
	Detach()

	// Init sends envd its settings (env vars, access token); SetToken tells the sandbox the
	// token envd enforces already.
	Init(ctx context.Context, req envd.InitRequest) error
	SetToken(token string)
	// HTTP reaches envd; Run runs a command (through envd); DialLocal reaches a guest port
	// through envd; Network is the sandbox's own network (nil: none).
	HTTP() *http.Client
	Run(ctx context.Context, spec sandbox.RunSpec, stdin io.Reader, stdout, stderr io.Writer, onStart func(pid uint32)) (sandbox.Result, error)
	DialLocal(ctx context.Context, port uint16) (net.Conn, error)
	Network() *netstack.Network
	OpenConsoleLog() (*vmm.ConsoleLog, error)
}

var _ Instance = (*sandbox.Sandbox)(nil)

// Templates are the snapshots the runtime restores sandboxes from (the runtime's own set).
type Templates interface {
	SetTemplate(name string, t *sandbox.Template)
	Template(name string) *sandbox.Template
	Templates() []*sandbox.Template
	DropTemplate(name string)
}

// SandboxRuntime is rt as the manager's Runtime.
func SandboxRuntime(rt *sandbox.Runtime) Runtime { return sandboxRuntime{rt} }

type sandboxRuntime struct{ rt *sandbox.Runtime }

// instance returns sb as an Instance: a nil one as nil (not an Instance holding a nil pointer).
func instance(sb *sandbox.Sandbox, err error) (Instance, error) {
	if sb == nil {
		return nil, err
	}
	return sb, err
}

func (r sandboxRuntime) Boot(ctx context.Context, opts sandbox.Options) (Instance, error) {
	return instance(r.rt.Boot(ctx, opts))
}

func (r sandboxRuntime) Adopt(ctx context.Context, id string, pid int, startTicks uint64, rules *netstack.Rules) (Instance, error) {
	return instance(r.rt.Adopt(ctx, id, pid, startTicks, rules))
}

func (r sandboxRuntime) Resume(ctx context.Context, dir string, init envd.InitRequest, rules *netstack.Rules, memory bool) (Instance, error) {
	return instance(r.rt.Resume(ctx, dir, init, rules, memory))
}

func (r sandboxRuntime) Snapshot(ctx context.Context, in Instance, home, name, label, team string, fork bool) (*sandbox.Template, error) {
	sb, ok := in.(*sandbox.Sandbox)
	if !ok {
		return nil, fmt.Errorf("snapshot: %T is not a sandbox of this runtime", in)
	}
	return r.rt.Snapshot(ctx, sb, home, name, label, team, fork)
}

// Slots reports the runtime's VM slots (see Manager.Recover).
func (r sandboxRuntime) Slots() (used, over int) { return r.rt.Slots() }
