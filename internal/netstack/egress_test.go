package netstack

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// lookup asks the network's DNS server, from the guest, for name's A records.
func (g *testGuest) lookup(t *testing.T, name string) (rcode int, addrs []string) {
	t.Helper()
	c, err := g.udp(GatewayIP.String(), 53)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	q, _ := query(name).Pack()
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	k, err := c.Read(buf)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	var m dns.Msg
	if err := m.Unpack(buf[:k]); err != nil {
		t.Fatal(err)
	}
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	return m.Rcode, addrs
}

// roundTrip writes msg on c and reads it back (an echo server is at the other end).
func roundTrip(c net.Conn, msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, sent %q", buf, msg)
	}
	return nil
}

// TestReservedRefusedBeforeDialling: connections from the guest to private, shared, link-local,
// metadata and other non-public addresses are refused by the network without the host dialling
// anything, with the internet on; so is one to an address a name resolved to, and one to the
// gateway (whose only service is DNS: it forwards nothing to the host's loopback).
func TestReservedRefusedBeforeDialling(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{Internet: true})
	o := newOutside(n)
	o.serveTCP(t, "80", echo)
	g := newTestGuest(t, n)
	defer func() { _ = n.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A public address goes out (to the stand-in for the world).
	c, err := g.dial(ctx, "1.2.3.4", 80)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "public"); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()

	reserved := []string{"10.1.2.3", "10.200.0.2", "172.16.5.4", "192.168.1.1", "100.64.0.1", "100.100.100.200",
		"168.63.129.16", "169.254.169.254", "198.18.0.1", "192.0.2.1", "0.1.2.3", "240.0.0.1", "192.168.127.1"}
	// A name the operator pinned to a private address resolves; the address stays closed.
	if rcode, addrs := g.lookup(t, "pinned.test"); rcode != dns.RcodeSuccess || !slices.Equal(addrs, []string{"10.200.0.9"}) {
		t.Fatalf("pinned.test: rcode %d, %v", rcode, addrs)
	}
	reserved = append(reserved, "10.200.0.9")
	denied := n.Stats().Denied
	for _, dst := range reserved {
		c, err := g.dial(ctx, dst, 80)
		if err == nil {
			_ = c.Close()
			t.Errorf("a connection to %s was accepted", dst)
		} else if !strings.Contains(err.Error(), "refused") {
			t.Errorf("a connection to %s: %v, want refused", dst, err)
		}
	}
	if got := n.Stats().Denied - denied; got != uint64(len(reserved)) {
		t.Errorf("%d connections denied, want %d", got, len(reserved))
	}
	// UDP too (DNS to the gateway aside, nothing answers, nothing is dialled).
	for _, dst := range []string{"10.1.2.3", "169.254.169.254", "192.168.127.1"} {
		u, err := g.udp(dst, 7)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = u.Write([]byte("ping"))
		_ = u.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if d := o.dialled(); !slices.Equal(d, []string{"tcp 1.2.3.4:80"}) {
		t.Fatalf("the host dialled %v, want only the public address", d)
	}
}

// TestRuntFramesLeaveTheNetworkWorking: frames shorter than an Ethernet header (which panicked
// the switch while it held a lock, wedging the network and Close) or from and to addresses
// other than the guest's and the gateway's are dropped; the network goes on forwarding and
// Close returns at once.
func TestRuntFramesLeaveTheNetworkWorking(t *testing.T) {
	n := newTestNetwork(t, Policy{Internet: true})
	o := newOutside(n)
	o.serveTCP(t, "80", echo)
	g := newTestGuest(t, n)
	go func() { <-t.Context().Done(); _ = n.Close() }() // a wedged Close must not hang the test
	for _, f := range [][]byte{{}, {1}, make([]byte, 6), make([]byte, 13),
		frame(GatewayMAC, "02:00:00:00:00:01", 60)[4:], // another source: the switch would learn it for good
		frame(GuestMAC, GuestMAC, 60)[4:],              // to the guest itself: the switch would send it back
	} {
		if err := g.writeFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := g.dial(ctx, "1.2.3.4", 80)
	if err != nil {
		t.Fatalf("the network after runt frames: %v", err)
	}
	if err := roundTrip(c, "still here"); err != nil {
		t.Fatal(err)
	}
	if cam := n.sw.CAM(); len(cam) != 1 || cam[GuestMAC] != 0 {
		t.Errorf("the switch learned %v", cam)
	}
	done := make(chan error, 1)
	go func() { done <- n.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

// TestPolicyUpdateEndsRefusedConnections: a policy update ends the forwarded TCP connections
// and UDP flows the new policy refuses, and only those.
func TestPolicyUpdateEndsRefusedConnections(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{Internet: true})
	o := newOutside(n)
	o.serveTCP(t, "80", echo)
	o.serveTCP(t, "8080", hostEcho)
	udpEcho(t, o, "7")
	g := newTestGuest(t, n)
	defer func() { _ = n.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	open := func(dst string) net.Conn {
		c, err := g.dial(ctx, dst, 80)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(c, "hi "+dst); err != nil {
			t.Fatal(err)
		}
		return c
	}
	refused, kept := open("1.2.3.4"), open("5.6.7.8")
	u, err := g.udp("1.2.3.4", 7)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = u.Close() }()
	if err := roundTrip(u, "ping"); err != nil {
		t.Fatal(err)
	}
	// A connection admitted by a name (allowed.test is 1.2.3.4 too).
	n.SetRules(mustCompile(t, Policy{AllowOut: []string{"allowed.test", "5.6.7.8"}}))
	if waitClosed(refused, 2*time.Second) == false {
		t.Fatal("a connection the new policy refuses (internet off) is still open")
	}
	if rcode, _ := g.lookup(t, "allowed.test"); rcode != dns.RcodeSuccess {
		t.Fatalf("allowed.test: rcode %d", rcode)
	}
	byName, err := g.dial(ctx, "1.2.3.4", 8080)
	if err != nil {
		t.Fatal(err)
	}
	if err := httpGet(byName, "allowed.test"); err != nil {
		t.Fatal(err)
	}
	_, _ = u.Write([]byte("ping"))
	_ = u.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if k, err := u.Read(make([]byte, 16)); err == nil {
		t.Fatalf("a UDP flow the new policy refuses still echoes (%d bytes)", k)
	}
	// Another update that still allows allowed.test by name and 5.6.7.8 keeps both.
	n.SetRules(mustCompile(t, Policy{AllowOut: []string{"*.test", "5.6.7.0/24"}}))
	if err := roundTrip(kept, "still allowed"); err != nil {
		t.Fatalf("a connection the new policy allows: %v", err)
	}
	if err := httpGet(byName, "allowed.test"); err != nil {
		t.Fatalf("a connection by an allowed name: %v", err)
	}
	// One that no longer allows the name ends it.
	n.SetRules(mustCompile(t, Policy{AllowOut: []string{"other.test", "5.6.7.8"}}))
	if !waitClosed(byName, 2*time.Second) {
		t.Fatal("a connection by a name the policy no longer allows is still open")
	}
	if err := roundTrip(kept, "still allowed"); err != nil {
		t.Fatalf("a connection the new policy allows: %v", err)
	}
	_ = kept.Close()
}

// hostEcho serves HTTP/1.1 keep-alive requests, answering each with its Host.
func hostEcho(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		body := "host=" + req.Host
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
			return
		}
	}
}

// httpGet sends a GET for host on c and checks the answer of hostEcho.
func httpGet(c net.Conn, host string) error {
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if string(body) != "host="+host {
		return fmt.Errorf("answer %q", body)
	}
	return nil
}

// udpEcho registers a loopback UDP echo server for port.
func udpEcho(t *testing.T, o *outside, port string) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:k], from)
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); wg.Wait() })
	o.mu.Lock()
	o.udp[port] = pc.LocalAddr().String()
	o.mu.Unlock()
}

// TestKeepAliveRequestsEachChecked: on a plain HTTP connection admitted by a name rule, a second
// request for a host the policy refuses ends the connection; the server never sees it.
func TestKeepAliveRequestsEachChecked(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{AllowOut: []string{"allowed.test"}})
	o := newOutside(n)
	var mu sync.Mutex
	var seen []string
	o.serveTCP(t, "80", func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, req.Host)
			mu.Unlock()
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	g := newTestGuest(t, n)
	defer func() { _ = n.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if rcode, addrs := g.lookup(t, "allowed.test"); rcode != dns.RcodeSuccess || len(addrs) != 1 {
		t.Fatalf("allowed.test: %d %v", rcode, addrs)
	}
	for _, pipelined := range []bool{false, true} {
		c, err := g.dial(ctx, "1.2.3.4", 80)
		if err != nil {
			t.Fatal(err)
		}
		first := "GET /1 HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
		second := "GET /2 HTTP/1.1\r\nHost: evil.test\r\n\r\n"
		br := bufio.NewReader(c)
		if pipelined {
			_, _ = io.WriteString(c, first+second)
		} else {
			_, _ = io.WriteString(c, first)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if !pipelined {
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("first request: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_, _ = io.WriteString(c, second)
		}
		// The connection ends (pipelined, maybe before the first answer came back).
		answers := 0
		for ; answers < 3; answers++ {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		if answers > 1 || (!pipelined && answers > 0) {
			t.Fatalf("pipelined %v: the request for evil.test was answered", pipelined)
		}
		_ = c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	// (The pipelined first request may be cut off with the connection.)
	if len(seen) == 0 || slices.Contains(seen, "evil.test") {
		t.Fatalf("the server saw requests for %v", seen)
	}
}

// TestDNSWithTheInternetOff: with the internet off, only names allowOut allows resolve, whatever
// CIDRs it allows too (those are reached by address).
func TestDNSWithTheInternetOff(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{AllowOut: []string{"1.2.3.0/24"}})
	defer func() { _ = n.Close() }()
	for _, name := range []string{"allowed.test", "api.example.com", "leak-secret.attacker.net"} {
		if resp := n.answer(query(name)); resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 {
			t.Errorf("%s with only a CIDR allowed: %v", name, resp)
		}
	}
	n.SetRules(mustCompile(t, Policy{AllowOut: []string{"1.2.3.0/24", "*.example.com"}}))
	if resp := n.answer(query("api.example.com")); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("an allowed name: %v", resp)
	}
	for _, name := range []string{"leak.attacker.net", `a\.example.com`, "example.com"} {
		if resp := n.answer(query(name)); resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 {
			t.Errorf("%s: %v", name, resp)
		}
	}
	// All of IPv4 denied in pieces is the internet off too.
	n.SetRules(mustCompile(t, Policy{Internet: true, DenyOut: []string{"0.0.0.0/1", "128.0.0.0/1"}}))
	if resp := n.answer(query("leak.attacker.net")); resp.Rcode != dns.RcodeRefused {
		t.Errorf("denyOut covering everything: %v", resp)
	}
}

// TestBodyEndsTheConnectionByName: a server that ignores a POST's body (it answers before
// reading it) reads the body as a request for evil.test; through the network, the guest gets
// the answer to its POST and then the end of the connection, never the answer for evil.test.
func TestBodyEndsTheConnectionByName(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{AllowOut: []string{"allowed.test"}})
	o := newOutside(n)
	served := make(chan string, 4)
	o.serveTCP(t, "80", func(c net.Conn) {
		// Every head is a request; what follows one is never read as its body.
		br := bufio.NewReader(c)
		for {
			host := ""
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if h, ok := strings.CutPrefix(line, "Host: "); ok {
					host = strings.TrimSpace(h)
				}
				if line == "\r\n" {
					break
				}
			}
			served <- host
			body := "host=" + host
			if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
				return
			}
		}
	})
	g := newTestGuest(t, n)
	defer func() { _ = n.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if rcode, _ := g.lookup(t, "allowed.test"); rcode != dns.RcodeSuccess {
		t.Fatalf("allowed.test: rcode %d", rcode)
	}
	c, err := g.dial(ctx, "1.2.3.4", 80)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := httpGet(c, "allowed.test"); err != nil { // a keep-alive request first
		t.Fatal(err)
	}
	smuggled := "GET /secret HTTP/1.1\r\nHost: evil.test\r\n\r\n"
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the connection did not end after the POST's answer: %v (read %q)", err, rest)
	}
	if want := "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nhost=allowed.test"; string(rest) != want {
		t.Fatalf("after the POST the guest read %q, want only %q", rest, want)
	}
}

// dnsOverTCP opens a TCP connection from the guest to the gateway's DNS server and asks for
// name on it; the answer is read by answered.
func (g *testGuest) dnsOverTCP(ctx context.Context, name string) (net.Conn, error) {
	c, err := g.dial(ctx, GatewayIP.String(), 53)
	if err != nil {
		return nil, err
	}
	if err := askTCP(c, name); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// askTCP sends a query for name on a DNS-over-TCP connection.
func askTCP(c net.Conn, name string) error {
	q, _ := query(name).Pack()
	_, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...))
	return err
}

// answered reads one DNS-over-TCP answer from c within d.
func answered(c net.Conn, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var size [2]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(size[:])))
	return err
}

// TestDNSOverTCPIsBounded: the gateway serves at most maxDNSConns DNS-over-TCP connections at
// once (each costs the host a goroutine and buffers; forwarded connections are bounded by
// maxFlows, these were not: 4000 cost 4000 goroutines and 64 MB); the next one waits until
// one of them ends, and the host's goroutines stay bounded however many the guest opens.
func TestDNSOverTCPIsBounded(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{})
	defer func() { _ = n.Close() }()
	g := newTestGuest(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runtime.GC()
	before := runtime.NumGoroutine()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range maxDNSConns {
		c, err := g.dnsOverTCP(ctx, "refused.example")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		if err := answered(c, 5*time.Second); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	// One more waits (in the listener's backlog) while they are open.
	next, err := g.dnsOverTCP(ctx, "refused.example")
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, next)
	if err := answered(next, 500*time.Millisecond); err == nil {
		t.Fatalf("connection %d was served while %d were open", maxDNSConns+1, maxDNSConns)
	}
	// 40 more (with the backlog full, their dials may not complete) cost the host nothing.
	var mu sync.Mutex
	var extra sync.WaitGroup
	for range 40 {
		extra.Add(1)
		go func() {
			defer extra.Done()
			dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer dcancel()
			if c, err := g.dnsOverTCP(dctx, "refused.example"); err == nil {
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	extra.Wait()
	if grown := runtime.NumGoroutine() - before; grown > maxDNSConns+10 {
		t.Errorf("%d DNS-over-TCP connections open grew the host's goroutines by %d", len(conns), grown)
	}
	// The first ones are still served (they were open all along), and once one ends, the
	// waiting one is.
	if err := askTCP(conns[0], "refused.example"); err != nil {
		t.Fatal(err)
	}
	if err := answered(conns[0], 5*time.Second); err != nil {
		t.Fatalf("a connection served before: %v (did it idle out?)", err)
	}
	_ = conns[1].Close()
	if err := answered(next, 5*time.Second); err != nil {
		t.Fatalf("connection %d once one ended: %v", maxDNSConns+1, err)
	}
}
