package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// testGuest is a guest without a VM: a gVisor stack of its own at the guest's address and MAC,
// whose frames go to Network.Attach in QEMU's stream framing over a unix socket pair, as a VM's
// virtio-net device's do through QEMU.
type testGuest struct {
	stack   *stack.Stack
	vm      net.Conn   // the VM's end of the link
	writeMu sync.Mutex // one frame at a time on vm
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// writeFrame writes frame on the link in QEMU's framing, as the VM would.
func (g *testGuest) writeFrame(frame []byte) error {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(frame)), uint32(len(frame)))
	b = append(b, frame...)
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	_, err := g.vm.Write(b)
	return err
}

// socketPair is a connected pair of unix stream sockets (QEMU's -netdev stream is one).
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "link")
		c, err := net.FileConn(f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// newTestGuest attaches a guest to n. Its link is closed by t's cleanup (or by Close).
func newTestGuest(t *testing.T, n *Network) *testGuest {
	t.Helper()
	vm, host := socketPair(t)
	ch := channel.New(1024, 1500+header.EthernetMinimumSize, tcpip.LinkAddress(mustMAC(GuestMAC)))
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(GuestIP.As4()), PrefixLen: Subnet.Bits()}}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	gw := tcpip.AddrFrom4(GatewayIP.As4())
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: gw, NIC: 1}})
	if err := s.AddStaticNeighbor(1, ipv4.ProtocolNumber, gw, tcpip.LinkAddress(mustMAC(GatewayMAC))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &testGuest{stack: s, vm: vm, cancel: cancel}
	g.wg.Add(2)
	go func() { // the guest's frames to the link
		defer g.wg.Done()
		for {
			pkt := ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			b := pkt.ToView().AsSlice()
			pkt.DecRef()
			if err := g.writeFrame(b); err != nil {
				return
			}
		}
	}()
	go func() { // the link's frames to the guest
		defer g.wg.Done()
		for {
			var hdr [4]byte
			if _, err := io.ReadFull(vm, hdr[:]); err != nil {
				return
			}
			frame := make([]byte, binary.BigEndian.Uint32(hdr[:]))
			if _, err := io.ReadFull(vm, frame); err != nil {
				return
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
			ch.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	}()
	if err := n.Attach(host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.close)
	return g
}

func (g *testGuest) close() {
	g.cancel()
	_ = g.vm.Close()
	g.wg.Wait()
	g.stack.Close()
	g.stack.Wait()
}

// dial opens a TCP connection from the guest to dst:port.
func (g *testGuest) dial(ctx context.Context, dst string, port uint16) (*gonet.TCPConn, error) {
	a := netip.MustParseAddr(dst)
	return gonet.DialContextTCP(ctx, g.stack, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a.As4()), Port: port}, ipv4.ProtocolNumber)
}

// udp opens a UDP socket from the guest to dst:port.
func (g *testGuest) udp(dst string, port uint16) (*gonet.UDPConn, error) {
	a := netip.MustParseAddr(dst)
	return gonet.DialUDP(g.stack, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a.As4()), Port: port}, ipv4.ProtocolNumber)
}

// outside stands in for the world outside the host: every connection the network dials for the
// guest is recorded and, if a loopback listener is registered for its port, made to it instead
// (nothing is ever dialled anywhere but the loopback).
type outside struct {
	mu    sync.Mutex
	dials []string
	tcp   map[string]string // port -> loopback address
	udp   map[string]string
}

func newOutside(n *Network) *outside {
	o := &outside{tcp: map[string]string{}, udp: map[string]string{}}
	n.dial = o.dial
	return o
}

func (o *outside) dial(ctx context.Context, network, address string) (net.Conn, error) {
	o.mu.Lock()
	o.dials = append(o.dials, network+" "+address)
	_, port, _ := net.SplitHostPort(address)
	to := o.tcp[port]
	if network == "udp" {
		to = o.udp[port]
	}
	o.mu.Unlock()
	if to == "" {
		return nil, errors.New("outside: nothing there (" + address + ")")
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

func (o *outside) dialled() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.dials...)
}

// serveTCP registers a loopback listener that stands for port on every outside address.
func (o *outside) serveTCP(t *testing.T, port string, handle func(net.Conn)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Close() }()
				handle(c)
			}()
		}
	}()
	o.mu.Lock()
	o.tcp[port] = ln.Addr().String()
	o.mu.Unlock()
}

// echo copies what it reads back until the connection ends.
func echo(c net.Conn) { _, _ = io.Copy(c, c) }

// waitClosed reads c until it ends; false if it is still open after d.
func waitClosed(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1024)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}
