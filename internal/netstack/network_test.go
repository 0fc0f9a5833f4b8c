package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

// upstream is a real DNS server on the host's loopback standing in for the host's resolver.
func upstream(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A: net.IPv4(1, 2, 3, 7)})
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func newTestNetwork(t testing.TB, p Policy) *Network {
	t.Helper()
	r, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{SandboxID: "t", Rules: r, Guard: &Guard{},
		Resolver: &Resolver{Upstream: []string{upstream(t)}, Hosts: map[string]netip.Addr{
			"pinned.test":  netip.MustParseAddr("10.200.0.9"), // an operator's name for a private address
			"allowed.test": netip.MustParseAddr("1.2.3.4"),
			"evil.test":    netip.MustParseAddr("1.2.3.4"), // the same address under another name
		}, Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// noLeaks checks, after every other cleanup of t, that no goroutine t started is left.
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func query(name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	return m
}

func TestDNSUnderPolicy(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"*.example.com", "pinned.test"}})
	defer func() { _ = n.Close() }()

	// An allowed name goes upstream; its address becomes reachable only by that name.
	resp := n.answer(query("api.example.com"))
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("allowed name: %v", resp)
	}
	if v, _ := n.judge(netip.MustParseAddr("1.2.3.7")); v != AllowIfName {
		t.Fatalf("learned address: %v, want allow-if-name", v)
	}
	// A name no rule allows is refused without asking upstream: nothing leaks through DNS.
	if resp := n.answer(query("leak-secret.attacker.net")); resp.Rcode != dns.RcodeRefused {
		t.Fatalf("denied name: rcode %d", resp.Rcode)
	}
	if n.Stats().DNSRefused != 1 {
		t.Fatalf("stats: %+v", n.Stats())
	}
	// Operator overrides answer locally.
	resp = n.answer(query("pinned.test"))
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "10.200.0.9" {
		t.Fatalf("override: %v", resp)
	}
	// The gateway and reserved addresses stay closed whatever the policy.
	for _, s := range []string{"192.168.127.1", "127.0.0.1", "169.254.169.254"} {
		if v, _ := n.judge(netip.MustParseAddr(s)); v != Deny {
			t.Fatalf("%s: %v", s, v)
		}
	}
	// A live update applies to the next decision.
	n.SetRules(mustCompile(t, Policy{Internet: true}))
	if v, _ := n.judge(netip.MustParseAddr("1.2.3.5")); v != Allow {
		t.Fatalf("after update: %v", v)
	}
}

func mustCompile(t testing.TB, p Policy) *Rules {
	t.Helper()
	r, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestCloseReleasesEverything: a network with a VM link attached, closed, leaves no goroutine
// and closes the link. The VM never takes a frame: a dial to it still ends with its context
// (the link is dropped after its write timeout instead of blocking the stack).
func TestCloseReleasesEverything(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{Internet: true})
	n.linkWriteTimeout = 50 * time.Millisecond
	vm, host := net.Pipe()
	if err := n.Attach(host); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := n.DialGuest(ctx, 8000); err == nil {
		t.Fatal("dialled a guest that is not there")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("a dial to a VM that takes no frames returned after %v", d)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Write([]byte{0, 0, 0, 1, 0}); err == nil {
		t.Fatal("the VM link is still open after Close")
	}
	if err := n.Attach(host); err == nil {
		t.Fatal("Attach after Close succeeded")
	}
}

// TestDialGuestBeforeTheGuestSpeaks: a connection to the guest (an exposed port) is sent down the
// VM's link even when the guest has not sent a frame yet (a restored guest is silent until it
// has something to say; the switch drops frames for MACs it has not learned).
func TestDialGuestBeforeTheGuestSpeaks(t *testing.T) {
	noLeaks(t)
	n := newTestNetwork(t, Policy{Internet: true})
	vm, host := net.Pipe()
	defer func() { _ = vm.Close() }()
	if err := n.Attach(host); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	dialed := make(chan struct{})
	go func() { _, _ = n.DialGuest(ctx, 8000); close(dialed) }() // fails at ctx's end: nothing answers
	defer func() { cancel(); <-dialed }()
	// The first frame on the link must be a TCP SYN to the guest's port 8000.
	_ = vm.SetReadDeadline(time.Now().Add(time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(vm, hdr[:]); err != nil {
		t.Fatalf("no frame reached the VM link: %v", err)
	}
	frame := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(vm, frame); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(frame[0:6], mustMAC(GuestMAC)) || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		t.Fatalf("frame to %x, ethertype %x: want IPv4 to the guest", frame[0:6], frame[12:14])
	}
	ip := frame[14:]
	tcp := ip[int(ip[0]&0x0f)*4:]
	if ip[9] != 6 || binary.BigEndian.Uint16(tcp[2:]) != 8000 || tcp[13]&0x02 == 0 {
		t.Fatalf("not a SYN to port 8000: proto %d, port %d, flags %x", ip[9], binary.BigEndian.Uint16(tcp[2:]), tcp[13])
	}
}

// BenchmarkSetup is what a sandbox's network adds to its creation: the stack, DNS, the VM link.
func BenchmarkSetup(b *testing.B) {
	r, err := Compile(Policy{Internet: true})
	if err != nil {
		b.Fatal(err)
	}
	res := &Resolver{Upstream: []string{"127.0.0.1:53"}}
	g := &Guard{}
	b.ReportAllocs()
	for b.Loop() {
		n, err := New(Config{SandboxID: "b", Rules: r, Resolver: res, Guard: g})
		if err != nil {
			b.Fatal(err)
		}
		vm, host := net.Pipe()
		if err := n.Attach(host); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = n.Close()
		_ = vm.Close()
		b.StartTimer()
	}
}

func TestMain(m *testing.M) {
	// gvisor-tap-vsock's switch logs each closed link through logrus; cmd/cell silences it too.
	logrus.SetOutput(io.Discard)
	os.Exit(m.Run())
}
