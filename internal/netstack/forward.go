package netstack

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// sniffTimeout bounds how long a connection admitted only by a name rule may take to say which
// name it is for.
const sniffTimeout = 10 * time.Second

// udpIdle ends a UDP flow that carried nothing for this long.
const udpIdle = 60 * time.Second

// judge applies the guard and the policy in force to a destination.
func (n *Network) judge(dst netip.Addr) (Verdict, string) {
	return n.judgeWith(n.rules.Load(), dst)
}

// judgeWith applies the guard and rules to a destination. The guard comes first: an address
// is refused for what it is, whatever name resolved to it.
func (n *Network) judgeWith(rules *Rules, dst netip.Addr) (Verdict, string) {
	if Subnet.Contains(dst.Unmap()) {
		return Deny, "the sandbox's own network (the gateway serves only DNS)"
	}
	if why, blocked := n.cfg.Guard.Blocked(dst); blocked {
		return Deny, why
	}
	v := rules.Decide(dst, n.learned.names(dst))
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

// flow is a forwarded TCP connection or UDP flow, known to the network so that a policy update
// ends it when the new policy refuses it.
type flow struct {
	udp    bool
	dst    netip.Addr
	port   uint16
	byName bool // admitted by a name rule (AllowIfName): what it names must stay allowed

	// Under Network.mu:
	rules   *Rules     // the rules it was last judged under
	names   []string   // the hosts it named last (TLS server name, HTTP Host and target)
	conns   []net.Conn // to close when it is revoked
	revoked bool
}

func (f *flow) proto() string {
	if f.udp {
		return "udp"
	}
	return "tcp"
}

// keeps says whether f may stay open under r. Called with n.mu held.
func (n *Network) keeps(f *flow, r *Rules) bool {
	v, _ := n.judgeWith(r, f.dst)
	switch {
	case v == Allow:
		return true
	case v == AllowIfName && f.byName && !f.udp:
		// Until it has named a host it is being sniffed; the name is judged then.
		for _, h := range f.names {
			if !r.NameAllowed(h) {
				return false
			}
		}
		return true
	}
	return false
}

// register makes f known to the network; false if the network is closed or the rules in force
// (if they changed since f was judged) refuse it.
func (n *Network) register(f *flow) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	if r := n.rules.Load(); r != f.rules {
		if !n.keeps(f, r) {
			return false
		}
		f.rules = r
	}
	n.flowSet[f] = struct{}{}
	return true
}

func (n *Network) unregister(f *flow) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.flowSet, f)
}

// attach adds c to what revoking f closes; false (c is not attached) if f was revoked already.
func (n *Network) attach(f *flow, c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f.revoked {
		return false
	}
	f.conns = append(f.conns, c)
	return true
}

// admitNames says whether a name-admitted flow may go on to hosts under the rules in force,
// and records them for later policy updates.
func (n *Network) admitNames(f *flow, hosts []string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f.revoked {
		return refuse("ended by a policy update")
	}
	r := n.rules.Load()
	v, why := n.judgeWith(r, f.dst)
	switch v {
	case Deny:
		return refuse("%s", why)
	case AllowIfName:
		for _, h := range hosts {
			if !r.NameAllowed(h) {
				return refuse("admitted by a name rule but asks for %q", h)
			}
		}
	}
	f.rules, f.names = r, hosts
	return nil
}

// SetRules replaces the egress policy. New connections follow it at once; forwarded
// connections and flows it refuses are ended (a name-admitted connection is kept while the
// hosts it named stay allowed).
func (n *Network) SetRules(r *Rules) {
	n.mu.Lock()
	n.rules.Store(r)
	var ended []*flow
	var conns []net.Conn
	for f := range n.flowSet {
		if !n.keeps(f, r) {
			f.revoked = true
			ended = append(ended, f)
			conns = append(conns, f.conns...)
			delete(n.flowSet, f)
		}
	}
	n.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	for _, f := range ended {
		n.denied(f.proto(), f.dst, f.port, "ended by a policy update")
	}
}

func (n *Network) forwardTCP(r *tcp.ForwarderRequest) {
	if !n.enter() {
		r.Complete(true)
		return
	}
	defer n.wg.Done()
	id := r.ID()
	dst, port := addrOf(id.LocalAddress), id.LocalPort
	rules := n.rules.Load()
	verdict, why := n.judgeWith(rules, dst)
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
	f := &flow{dst: dst, port: port, byName: verdict == AllowIfName, rules: rules}
	if !n.register(f) {
		n.denied("tcp", dst, port, "egress policy (updated)")
		r.Complete(true)
		return
	}
	defer n.unregister(f)
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(port)))
	var out net.Conn
	if verdict == Allow {
		// Dial first: a refused or unreachable destination is a RST to the guest, as if direct.
		var err error
		out, err = n.dialOut("tcp", target)
		if err != nil {
			n.log.Debug("outbound dial failed", "dst", target, "err", err)
			r.Complete(true)
			return
		}
		if !n.attach(f, out) {
			_ = out.Close()
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
	if !n.track(guest) || !n.attach(f, guest) {
		ep.Abort()
		n.untrack(guest)
		if out != nil {
			_ = out.Close()
		}
		return
	}
	defer n.untrack(guest)
	if verdict == AllowIfName {
		n.forwardByName(f, ep, guest, target)
		return
	}
	n.stats.connections.Add(1)
	if !n.track(out) {
		_ = out.Close()
		return
	}
	defer n.untrack(out)
	splice(guest, out)
}

// abortable is the guest side's endpoint, reset when a connection is refused.
type abortable interface{ Abort() }

// forwardByName forwards a connection admitted by a name rule: the host it names must be
// allowed before it is dialled, and every host it names later too.
func (n *Network) forwardByName(f *flow, ep abortable, guest net.Conn, target string) {
	gr := bufio.NewReaderSize(guest, guestReaderSize)
	s, err := sniffName(guest, gr, sniffTimeout)
	if err == nil {
		err = n.admitNames(f, []string{s.name})
	}
	if err != nil {
		n.denied("tcp", f.dst, f.port, "admitted by a name rule: "+err.Error())
		ep.Abort()
		return
	}
	out, err := n.dialOut("tcp", target)
	if err != nil {
		n.log.Debug("outbound dial failed", "dst", target, "err", err)
		ep.Abort()
		return
	}
	if !n.track(out) {
		_ = out.Close()
		return
	}
	defer n.untrack(out)
	if !n.attach(f, out) {
		ep.Abort()
		return
	}
	n.stats.connections.Add(1)
	admit := func(hosts []string) error { return n.admitNames(f, hosts) }
	if s.tls {
		err = relayTLS(guest, gr, out, s, admit)
	} else {
		err = relayHTTP(guest, gr, out, s.req, admit)
	}
	var ref refusal
	if errors.As(err, &ref) {
		n.denied("tcp", f.dst, f.port, "admitted by a name rule: "+err.Error())
		ep.Abort()
	}
}

// maxPipelined bounds the requests sent on whose responses have not come back yet: the
// request side waits for the response side beyond.
const maxPipelined = 64

// relayHTTP relays a name-admitted plain HTTP connection, checking every request's host. After
// a request with a body it ends the connection once that request's response is complete (see
// relayRequests).
func relayHTTP(guest net.Conn, gr *bufio.Reader, out net.Conn, first *reqHead, admit func([]string) error) error {
	sent := make(chan *reqHead, maxPipelined)
	tunnel := make(chan bool, 1)
	answered := make(chan struct{}) // closed when the response side has ended
	go func() {
		defer close(answered)
		err := relayResponses(guest, out, sent, tunnel)
		if errors.Is(err, errAnswered) {
			err = nil // the guest reads the response to its end, then the end of the connection
		}
		endHalf(guest, out, err)
	}()
	push := func(rq *reqHead) bool {
		select {
		case sent <- rq:
			return true
		case <-answered:
			return false
		}
	}
	err := relayRequests(out, gr, first, admit, push, func() bool { return <-tunnel })
	close(sent)
	switch {
	case errors.Is(err, errBodySent):
		<-answered
		_ = guest.Close()
		_ = out.Close()
		return nil
	case errors.Is(err, errRelayEnded):
		err = nil
	}
	endHalf(out, guest, err)
	<-answered
	return err
}

// relayTLS relays a name-admitted TLS connection whose ClientHello (hello.head) was read
// already. It returns the guest's side's error, or the server's side's if that refused it.
func relayTLS(guest net.Conn, gr *bufio.Reader, out net.Conn, hello sniffed, admit func([]string) error) error {
	if _, err := out.Write(hello.head); err != nil {
		return err
	}
	var state atomic.Int32
	var srvErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srvErr = relayTLSServer(guest, out, &state)
		endHalf(guest, out, srvErr)
	}()
	err := relayTLSClient(out, gr, &state, admit, hello.earlyData)
	endHalf(out, guest, err)
	wg.Wait()
	var ref refusal
	if !errors.As(err, &ref) && errors.As(srvErr, &ref) {
		return srvErr
	}
	return err
}

// endHalf ends one direction of a relay: dst's write side after src ended cleanly (err nil),
// both connections after an error.
func endHalf(dst, src net.Conn, err error) {
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	_ = dst.Close()
	_ = src.Close()
}

// dialOut opens a connection from the host for the guest, bounded by dialTimeout.
func (n *Network) dialOut(network, target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
	defer cancel()
	return n.dial(ctx, network, target)
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
	endHalf(dst, src, err)
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
	rules := n.rules.Load()
	verdict, why := n.judgeWith(rules, dst)
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
	f := &flow{udp: true, dst: dst, port: port, rules: rules}
	if !n.register(f) {
		n.denied("udp", dst, port, "egress policy (updated)")
		return
	}
	defer func() {
		if !ok {
			n.unregister(f)
		}
	}()
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		return
	}
	guest := gonet.NewUDPConn(&wq, ep)
	out, err := n.dialOut("udp", net.JoinHostPort(dst.String(), strconv.Itoa(int(port))))
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
	if !n.attach(f, guest) || !n.attach(f, out) {
		n.untrack(out)
		n.untrack(guest)
		return
	}
	ok, done = true, false
	n.stats.connections.Add(1)
	go func() {
		defer n.wg.Done()
		defer n.flows.Add(-1)
		defer n.unregister(f)
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

// frameGuard checks QEMU's stream framing (4-byte big-endian length, then the frame) between
// the VM and gvisor-tap-vsock's switch, which trusts what it reads: it allocates what a length
// says, reads a frame's Ethernet header without checking that there is one (a frame shorter
// than 14 bytes panics it while it holds its address table's lock, and the link's teardown
// then waits for that lock forever, wedging the network and Close), learns every source MAC
// address it sees into a table that never shrinks, and sends a frame to any MAC it has
// learned. So a length above maxFrame ends the link; a frame is dropped unless it is at least
// an Ethernet header long, comes from the guest's MAC, and goes to the gateway's or to the
// broadcast address (the guest has no one else to talk to).
//
// Writes to the VM time out: a guest that stops taking frames (QEMU stops reading the socket
// when the guest's receive ring is full) would otherwise block the switch, and with it every
// sender in the sandbox's stack, forever; after writeTimeout the switch drops the link instead.
type frameGuard struct {
	net.Conn
	writeTimeout time.Duration // 0: none
	pending      []byte        // frames to read before the connection's own
	// taken is closed when the switch asks for more than pending: it has handled pending's
	// frames by then (it reads the next frame only once it is done with the previous one).
	taken chan struct{}

	guestMAC, gatewayMAC [6]byte
	r                    *bufio.Reader // the VM's side, buffered
	hdr                  [4 + header.EthernetMinimumSize]byte
	out                  []byte // what of hdr the switch has yet to read
	remain               int    // frame bytes after hdr the switch has yet to read
	dropped              int    // frames dropped
}

func newFrameGuard(conn net.Conn, writeTimeout time.Duration, pending []byte) *frameGuard {
	f := &frameGuard{Conn: conn, writeTimeout: writeTimeout, pending: pending, taken: make(chan struct{})}
	copy(f.guestMAC[:], mustMAC(GuestMAC))
	copy(f.gatewayMAC[:], mustMAC(GatewayMAC))
	return f
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
	if f.r == nil {
		f.r = bufio.NewReaderSize(f.Conn, 64<<10)
	}
	for len(f.out) == 0 && f.remain == 0 {
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	if len(f.out) > 0 {
		k := copy(p, f.out)
		f.out = f.out[k:]
		return k, nil
	}
	k, err := f.r.Read(p[:min(len(p), f.remain)])
	f.remain -= k
	return k, err
}

// next reads the next frame's length and Ethernet header, and skips the frame if the switch
// must not see it.
func (f *frameGuard) next() error {
	if _, err := io.ReadFull(f.r, f.hdr[:4]); err != nil {
		return err
	}
	size := int(binary.BigEndian.Uint32(f.hdr[:4]))
	if size > maxFrame {
		return fmt.Errorf("netstack: frame of %d bytes exceeds %d", size, maxFrame)
	}
	if size < header.EthernetMinimumSize {
		f.dropped++
		_, err := f.r.Discard(size)
		return err
	}
	if _, err := io.ReadFull(f.r, f.hdr[4:]); err != nil {
		return err
	}
	eth := header.Ethernet(f.hdr[4:])
	dst, src := eth.DestinationAddress(), eth.SourceAddress()
	if src != tcpip.LinkAddress(f.guestMAC[:]) || (dst != tcpip.LinkAddress(f.gatewayMAC[:]) && dst != header.EthernetBroadcastAddress) {
		f.dropped++
		_, err := f.r.Discard(size - header.EthernetMinimumSize)
		return err
	}
	f.out = f.hdr[:]
	f.remain = size - header.EthernetMinimumSize
	return nil
}
