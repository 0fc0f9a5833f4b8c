package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Config is what a sandbox's network is made with.
type Config struct {
	SandboxID string
	Rules     *Rules
	Resolver  *Resolver
	Guard     *Guard
	Log       *slog.Logger
}

// Stats are a network's counters.
type Stats struct {
	BytesIn     uint64 // to the guest
	BytesOut    uint64 // from the guest
	Denied      uint64 // connections and flows refused by policy or guard
	DNSRefused  uint64
	Connections uint64 // admitted TCP connections and UDP flows
}

type counters struct {
	denied, dnsRefused, connections atomic.Uint64
}

// Network is one sandbox's virtual network.
type Network struct {
	cfg     Config
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc
	stack   *stack.Stack
	sw      *tap.Switch
	rules   atomic.Pointer[Rules]
	learned learned
	stats   counters
	dns     []*dns.Server

	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]struct{} // everything to close on Close
	flowSet map[*flow]struct{}    // forwarded connections and flows, for policy updates
	wg      sync.WaitGroup

	// dial opens connections from the host for the guest (a net.Dialer's; tests stand in for
	// the outside world with their own).
	dial func(ctx context.Context, network, address string) (net.Conn, error)

	denyLog rateLimit
	// linkWriteTimeout bounds one write of a frame to the VM (see frameGuard).
	linkWriteTimeout time.Duration
	// flows counts forwarded TCP connections and UDP flows open at once (bounded by maxFlows);
	// dnsInFlight, upstream DNS queries (bounded by maxDNSInFlight).
	flows, dnsInFlight atomic.Int64
}

// Per-sandbox bounds, so that a guest cannot exhaust the host's sockets or flood its resolver.
const (
	maxFlows       = 1024
	maxDNSInFlight = 64
	// maxDNSConns bounds the guest's DNS-over-TCP connections to the gateway served at once
	// (each holds a goroutine and buffers on the host; more wait in the listener's backlog).
	maxDNSConns = 64
)

// DNS over TCP at the gateway: a connection's first query must come within dnsReadTimeout, each
// later one within dnsIdleTimeout, at most dnsMaxQueries on one connection (RFC 7766 leaves the
// idle timeout to the server, "of the order of seconds"; a resolver falling back to TCP for a
// truncated answer asks once or twice).
const (
	dnsReadTimeout = 2 * time.Second
	dnsIdleTimeout = 3 * time.Second
	dnsMaxQueries  = 16
)

// dialTimeout bounds an outbound connection attempt made for the guest.
const dialTimeout = 10 * time.Second

// linkWriteTimeout is how long the VM may leave a frame untaken before its link is dropped
// (far longer than any stop of the VM for a snapshot).
const linkWriteTimeout = 30 * time.Second

// New builds a network. Attach a VM to it with Attach; Close releases it.
func New(cfg Config) (*Network, error) {
	if cfg.Rules == nil || cfg.Resolver == nil || cfg.Guard == nil {
		return nil, errors.New("netstack: Rules, Resolver and Guard are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Network{cfg: cfg, log: cfg.Log.With("sandbox", cfg.SandboxID), ctx: ctx, cancel: cancel,
		conns: map[net.Conn]struct{}{}, flowSet: map[*flow]struct{}{}, linkWriteTimeout: linkWriteTimeout,
		dial: (&net.Dialer{}).DialContext}
	n.rules.Store(cfg.Rules)
	if err := n.build(); err != nil {
		cancel()
		if n.stack != nil {
			n.stack.Destroy()
		}
		return nil, err
	}
	return n, nil
}

func (n *Network) build() error {
	link, err := tap.NewLinkEndpoint(false, MTU, GatewayMAC, GatewayIP.String(), nil)
	if err != nil {
		return fmt.Errorf("netstack: link endpoint: %w", err)
	}
	n.sw = tap.NewSwitch(false)
	link.Connect(n.sw)
	n.sw.Connect(link)

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	n.stack = s
	if err := s.CreateNIC(1, link); err != nil {
		return fmt.Errorf("netstack: NIC: %s", err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(GatewayIP.As4()).WithPrefix(),
	}, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("netstack: gateway address: %s", err)
	}
	// The stack answers for every destination (it is the guest's way to all of them).
	if err := s.SetSpoofing(1, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	if err := s.SetPromiscuousMode(1, true); err != nil {
		return fmt.Errorf("netstack: promiscuous: %s", err)
	}
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom4(Subnet.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(Subnet.Bits(), 32)))
	if err != nil {
		return fmt.Errorf("netstack: subnet: %w", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: 1}})
	// The guest's MAC is known: no ARP round trip before the first reply.
	if err := s.AddStaticNeighbor(1, ipv4.ProtocolNumber, tcpip.AddrFrom4(GuestIP.As4()), tcpip.LinkAddress(mustMAC(GuestMAC))); err != nil {
		return fmt.Errorf("netstack: guest neighbour: %s", err)
	}
	sack := tcpip.TCPSACKEnabled(true)
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate)
	// Buffers: 1 MiB windows, growing to 2 MiB, carry the guest's Gbit/s (1 MiB ones measured
	// ~15% slower); the maximum bounds what a guest that stops reading (or a destination that
	// does) can make the host hold: maxFlows × 4 MiB at the very worst.
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 2 << 20}
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 2 << 20}
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)

	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcp.NewForwarder(s, 0, 256, n.forwardTCP).HandlePacket)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(s, n.forwardUDP).HandlePacket)
	return n.serveDNS()
}

func mustMAC(s string) []byte {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

func (n *Network) serveDNS() error {
	gw := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(GatewayIP.As4()), Port: 53}
	pc, err := gonet.DialUDP(n.stack, &gw, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("netstack: DNS over UDP: %w", err)
	}
	ln, err := gonet.ListenTCP(n.stack, gw, ipv4.ProtocolNumber)
	if err != nil {
		_ = pc.Close()
		return fmt.Errorf("netstack: DNS over TCP: %w", err)
	}
	udpSrv := &dns.Server{PacketConn: pc, Handler: n}
	tcpSrv := &dns.Server{Listener: netutil.LimitListener(ln, maxDNSConns), Handler: n,
		ReadTimeout: dnsReadTimeout, IdleTimeout: func() time.Duration { return dnsIdleTimeout }, MaxTCPQueries: dnsMaxQueries}
	n.dns = []*dns.Server{udpSrv, tcpSrv}
	for _, srv := range n.dns {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			_ = srv.ActivateAndServe()
		}()
	}
	return nil
}

// Attach connects a VM's network device (a connection speaking QEMU's stream framing) to the
// network and serves it until it closes or the network does. A later Attach replaces it (after
// a restart of the host process, the VM's socket is dialled again).
func (n *Network) Attach(conn net.Conn) error {
	if !n.enter() {
		_ = conn.Close()
		return errors.New("netstack: network closed")
	}
	if !n.track(conn) {
		n.wg.Done()
		_ = conn.Close()
		return errors.New("netstack: network closed")
	}
	link := newFrameGuard(conn, n.linkWriteTimeout, announceFrame())
	taken := link.taken
	go func() {
		defer n.wg.Done()
		defer n.untrack(conn)
		err := n.sw.Accept(n.ctx, link, types.QemuProtocol)
		if err != nil && n.ctx.Err() == nil {
			n.log.Debug("network device detached", "err", err)
		}
	}()
	// Once the switch has taken the announcement, frames for the guest go down this link.
	select {
	case <-taken:
	case <-n.ctx.Done():
	case <-time.After(time.Second):
		n.log.Warn("network switch did not take the guest's announcement")
	}
	return nil
}

// announceFrame is a gratuitous ARP from the guest, in QEMU's stream framing, read by the switch
// as if the VM had sent it first: the switch learns which link the guest's MAC is on, so traffic
// to the guest (an exposed port) flows before the guest has sent anything itself (the switch
// drops frames for MACs it has not learned, and the gateway knows the guest's MAC statically, so
// it never asks). QEMU's own announcement after a restore is off: see vmm.
func announceFrame() []byte {
	guest, gw := mustMAC(GuestMAC), mustMAC(GatewayMAC)
	gip, gwip := GuestIP.As4(), GatewayIP.As4()
	f := make([]byte, 4+60) // length, then a minimum-size Ethernet frame
	binary.BigEndian.PutUint32(f, 60)
	e := f[4:]
	copy(e[0:6], gw)
	copy(e[6:12], guest)
	binary.BigEndian.PutUint16(e[12:], 0x0806) // ARP
	a := e[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 2) // reply
	copy(a[8:14], guest)
	copy(a[14:18], gip[:])
	copy(a[18:24], gw)
	copy(a[24:28], gwip[:])
	return f
}

// Rules returns the egress policy in force.
func (n *Network) Rules() *Rules { return n.rules.Load() }

// Stats returns the network's counters.
func (n *Network) Stats() Stats {
	return Stats{
		BytesIn:     atomic.LoadUint64(&n.sw.Sent),
		BytesOut:    atomic.LoadUint64(&n.sw.Received),
		Denied:      n.stats.denied.Load(),
		DNSRefused:  n.stats.dnsRefused.Load(),
		Connections: n.stats.connections.Load(),
	}
}

// DialGuest opens a TCP connection to port of the guest, from the gateway.
func (n *Network) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	c, err := gonet.DialContextTCP(ctx, n.stack, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(GuestIP.As4()), Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	if !n.track(c) {
		_ = c.Close()
		return nil, errors.New("netstack: network closed")
	}
	return &trackedConn{Conn: c, n: n}, nil
}

// Close tears the network down: the VM's link, every forwarded connection, DNS, the stack.
func (n *Network) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	conns := n.conns
	n.conns = nil
	n.mu.Unlock()
	n.cancel()
	for c := range conns {
		_ = c.Close()
	}
	for _, srv := range n.dns {
		_ = srv.Shutdown()
	}
	n.stack.Close()
	n.wg.Wait()
	n.stack.Wait()
	return nil
}

// enter registers a goroutine that Close must wait for; false once the network is closed.
func (n *Network) enter() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	return true
}

func (n *Network) track(c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.conns[c] = struct{}{}
	return true
}

func (n *Network) untrack(c net.Conn) {
	_ = c.Close()
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns, c)
}

type trackedConn struct {
	net.Conn
	n    *Network
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.n.untrack(c.Conn) })
	return nil
}

// CloseWrite half-closes when the connection can.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// addrOf converts a stack address to netip.
func addrOf(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

// rateLimit lets at most burst events through per second.
type rateLimit struct {
	mu     sync.Mutex
	window time.Time
	count  int
}

func (r *rateLimit) allow(burst int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.window) > time.Second {
		r.window, r.count = now, 0
	}
	r.count++
	return r.count <= burst
}
