package netstack

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// sniffTimeout bounds how long a connection admitted only by a name rule may take to say which
// name it is for.
const sniffTimeout = 10 * time.Second

// udpIdle ends a UDP flow that carried nothing for this long.
const udpIdle = 60 * time.Second

// judge applies the guard and the policy to a destination.
func (n *Network) judge(dst netip.Addr) (Verdict, string) {
	if dst == GatewayIP {
		return Deny, "the gateway serves only DNS"
	}
	if why, blocked := n.cfg.Guard.Blocked(dst); blocked {
		return Deny, why
	}
	v := n.rules.Load().Decide(dst, n.learned.names(dst))
	if v == Deny {
		return Deny, "egress policy"
	}
	return v, ""
}

func (n *Network) denied(proto string, dst netip.Addr, port uint16, why string) {
	n.stats.denied.Add(1)
	if n.denyLog.allow(20) {
		n.log.Info("egress denied", "proto", proto, "dst", netip.AddrPortFrom(dst, port).String(), "reason", why)
	}
}

// takeFlow reserves one of the network's flows; release it with n.flows.Add(-1).
func (n *Network) takeFlow() bool {
	if n.flows.Add(1) > maxFlows {
		n.flows.Add(-1)
		return false
	}
	return true
}

func (n *Network) forwardTCP(r *tcp.ForwarderRequest) {
	if !n.enter() {
		r.Complete(true)
		return
	}
	defer n.wg.Done()
	id := r.ID()
	dst, port := addrOf(id.LocalAddress), id.LocalPort
	verdict, why := n.judge(dst)
	if verdict == Deny {
		n.denied("tcp", dst, port, why)
		r.Complete(true) // RST
		return
	}
	if !n.takeFlow() {
		n.denied("tcp", dst, port, fmt.Sprintf("more than %d connections open", maxFlows))
		r.Complete(true)
		return
	}
	defer n.flows.Add(-1)
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(port)))
	var out net.Conn
	if verdict == Allow {
		// Dial first: a refused or unreachable destination is a RST to the guest, as if direct.
		var err error
		out, err = n.dial(target)
		if err != nil {
			n.log.Debug("outbound dial failed", "dst", target, "err", err)
			r.Complete(true)
			return
		}
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		if out != nil {
			_ = out.Close()
		}
		return
	}
	ep.SocketOptions().SetDelayOption(false)
	guest := gonet.NewTCPConn(&wq, ep)
	if !n.track(guest) {
		ep.Abort()
		if out != nil {
			_ = out.Close()
		}
		return
	}
	var head []byte
	if verdict == AllowIfName {
		name, h, err := sniffName(guest, sniffTimeout)
		if err != nil || !matchHostName(n.rules.Load(), name) {
			if err != nil {
				why = "admitted by a name rule but names no host: " + err.Error()
			} else {
				why = fmt.Sprintf("admitted by a name rule but asks for %q", name)
			}
			n.denied("tcp", dst, port, why)
			ep.Abort()
			n.untrack(guest)
			return
		}
		head = h
		out, err = n.dial(target)
		if err != nil {
			ep.Abort()
			n.untrack(guest)
			return
		}
	}
	n.stats.connections.Add(1)
	if !n.track(out) {
		_ = out.Close()
		n.untrack(guest)
		return
	}
	if len(head) > 0 {
		if _, err := out.Write(head); err != nil {
			n.untrack(out)
			n.untrack(guest)
			return
		}
	}
	splice(guest, out)
	n.untrack(out)
	n.untrack(guest)
}

func (n *Network) dial(target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", target)
}

// splice copies both ways until both directions ended, half-closing as each does.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	wg.Wait()
}

func copyHalf(dst, src net.Conn) {
	buf := make([]byte, 256<<10)
	_, err := io.CopyBuffer(dst, src, buf)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
		_ = src.Close()
	}
}

func (n *Network) forwardUDP(r *udp.ForwarderRequest) {
	if !n.enter() {
		return
	}
	done := true // whether this call still owns the wait-group entry
	defer func() {
		if done {
			n.wg.Done()
		}
	}()
	id := r.ID()
	dst, port := addrOf(id.LocalAddress), id.LocalPort
	verdict, why := n.judge(dst)
	if verdict != Allow {
		if verdict == AllowIfName {
			why = "a name rule cannot admit UDP (no name to check)"
		}
		n.denied("udp", dst, port, why)
		return
	}
	if !n.takeFlow() {
		n.denied("udp", dst, port, fmt.Sprintf("more than %d flows open", maxFlows))
		return
	}
	ok := false
	defer func() {
		if !ok {
			n.flows.Add(-1)
		}
	}()
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		return
	}
	guest := gonet.NewUDPConn(&wq, ep)
	out, err := net.Dial("udp", net.JoinHostPort(dst.String(), strconv.Itoa(int(port))))
	if err != nil {
		_ = guest.Close()
		return
	}
	if !n.track(guest) {
		_ = out.Close()
		return
	}
	if !n.track(out) {
		_ = out.Close()
		n.untrack(guest)
		return
	}
	ok, done = true, false
	n.stats.connections.Add(1)
	go func() {
		defer n.wg.Done()
		defer n.flows.Add(-1)
		defer n.untrack(out)
		defer n.untrack(guest)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			relayUDP(out, guest)
		}()
		relayUDP(guest, out)
		wg.Wait()
	}()
}

// relayUDP moves datagrams from src to dst until src has been idle for udpIdle, then ends both.
func relayUDP(dst, src net.Conn) {
	buf := make([]byte, 65535)
	for {
		_ = src.SetReadDeadline(time.Now().Add(udpIdle))
		k, err := src.Read(buf)
		if err != nil {
			_ = src.Close()
			_ = dst.Close()
			return
		}
		if _, err := dst.Write(buf[:k]); err != nil {
			_ = src.Close()
			_ = dst.Close()
			return
		}
	}
}

// maxFrame bounds one frame from QEMU's stream backend (a 64 KiB packet plus its Ethernet header).
const maxFrame = 65536 + 64

// frameGuard checks QEMU's stream framing (4-byte big-endian length, then the frame) so that a
// length the switch would allocate blindly is refused instead. Writes to the VM time out: a
// guest that stops taking frames (QEMU stops reading the socket when the guest's receive ring
// is full) would otherwise block the switch, and with it every sender in the sandbox's stack,
// forever; after writeTimeout the switch drops the link instead.
type frameGuard struct {
	net.Conn
	writeTimeout time.Duration // 0: none
	pending      []byte        // frames to read before the connection's own
	// taken is closed when the switch asks for more than pending: it has handled pending's
	// frames by then (it reads the next frame only once it is done with the previous one).
	taken  chan struct{}
	hdr    [4]byte
	inHdr  int // header bytes seen of the current frame
	remain int // body bytes left in the current frame
}

func (f *frameGuard) Write(p []byte) (int, error) {
	if f.writeTimeout > 0 {
		if err := f.Conn.SetWriteDeadline(time.Now().Add(f.writeTimeout)); err != nil {
			return 0, err
		}
	}
	return f.Conn.Write(p)
}

func (f *frameGuard) Read(p []byte) (int, error) {
	if len(f.pending) > 0 {
		k := copy(p, f.pending)
		f.pending = f.pending[k:]
		return k, nil
	}
	if f.taken != nil {
		close(f.taken)
		f.taken = nil
	}
	k, err := f.Conn.Read(p)
	for i := 0; i < k; {
		if f.remain > 0 {
			step := min(f.remain, k-i)
			f.remain -= step
			i += step
			continue
		}
		f.hdr[f.inHdr] = p[i]
		f.inHdr++
		i++
		if f.inHdr == 4 {
			f.inHdr = 0
			size := int(binary.BigEndian.Uint32(f.hdr[:]))
			if size > maxFrame {
				return 0, fmt.Errorf("netstack: frame of %d bytes exceeds %d", size, maxFrame)
			}
			f.remain = size
		}
	}
	return k, err
}
