package sandbox

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
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

// DialLocal opens a connection to port on the guest's loopback, through envd over the channel
// (for servers that listen on 127.0.0.1 only, which the network cannot reach). An error whose
// text says "not open" means nothing listens there.
func (s *Sandbox) DialLocal(ctx context.Context, port uint16) (net.Conn, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, envdURL+envd.LocalTCPPath+"?port="+strconv.Itoa(int(port)), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", envd.LocalTCPProtocol)
	resp, err := s.own.Do(req)
	if err != nil {
		return nil, fmt.Errorf("envd %s: %w", envd.LocalTCPPath, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		_ = resp.Body.Close()
		return nil, fmt.Errorf("envd %s: HTTP %d: %s", envd.LocalTCPPath, resp.StatusCode, msg)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("envd %s: the upgraded stream is not writable", envd.LocalTCPPath)
	}
	return &streamConn{ReadWriteCloser: rwc, port: int(port)}, nil
}

// streamConn is a net.Conn over an upgraded HTTP stream (deadlines are not supported).
type streamConn struct {
	io.ReadWriteCloser
	port int
}

func (c *streamConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (c *streamConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: c.port}
}
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }
