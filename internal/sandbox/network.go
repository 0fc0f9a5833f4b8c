package sandbox

import (
	"fmt"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
)

// NetEnv is what every sandbox network of a runtime is made with.
type NetEnv struct {
	// Off: VMs have no network device at all.
	Off      bool
	Resolver *netstack.Resolver
	Guard    *netstack.Guard
}

// DefaultRules is the egress policy of a sandbox nobody said anything about: internet on.
func DefaultRules() *netstack.Rules {
	r, err := netstack.Compile(netstack.Policy{Internet: true})
	if err != nil {
		panic(err) // a constant policy
	}
	return r
}

// kernelArgs are the guest kernel arguments Cell adds for a sandbox: its name and its network.
func (r *Runtime) kernelArgs(id string) []string {
	return append([]string{"cell.hostname=" + id}, r.netArgs()...)
}

func (r *Runtime) netArgs() []string {
	if r.Net.Off {
		return nil
	}
	return []string{netstack.KernelArg()}
}

// attachNet gives a started VM its own network under rules (nil: DefaultRules). A VM without a
// network device gets none.
func (r *Runtime) attachNet(s *Sandbox, rules *netstack.Rules) error {
	conn := s.VM.TakeNet()
	if conn == nil {
		return nil
	}
	if rules == nil {
		rules = DefaultRules()
	}
	n, err := netstack.New(netstack.Config{SandboxID: s.ID, Rules: rules, Resolver: r.Net.Resolver, Guard: r.Net.Guard, Log: r.Log})
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("sandbox %s: network: %w", s.ID, err)
	}
	if err := n.Attach(conn); err != nil {
		_ = n.Close()
		return fmt.Errorf("sandbox %s: network: %w", s.ID, err)
	}
	s.Net = n
	return nil
}

// netVM is the vmm configuration that gives VMs a network device.
func netVM(cfg *vmm.Config, off bool) {
	if !off {
		cfg.NetMAC = netstack.GuestMAC
	}
}
