package netstack

import (
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestCompileErrorsNameTheEntry(t *testing.T) {
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{Internet: true, DenyOut: []string{"example.com"}}, `network.denyOut[0]: "example.com" is a domain name`},
		{Policy{Internet: true, DenyOut: []string{"10.0.0.0/8", "10.0.0.0/33"}}, `network.denyOut[1]`},
		{Policy{Internet: true, AllowOut: []string{"bad name!"}}, `network.allowOut[0]`},
		{Policy{Internet: true, AllowOut: []string{"1.2.3.400"}}, `network.allowOut[0]`},
		{Policy{Internet: true, AllowOut: []string{"*."}}, `network.allowOut[0]`},
		{Policy{Internet: true, AllowOut: []string{"a..b"}}, `network.allowOut[0]`},
		{Policy{Internet: true, AllowOut: []string{"::1"}}, `network.allowOut[0]`},
	} {
		_, err := Compile(c.p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
}

func TestDecide(t *testing.T) {
	a := netip.MustParseAddr
	cases := []struct {
		name    string
		p       Policy
		dst     string
		learned []string
		want    Verdict
	}{
		{"internet on", Policy{Internet: true}, "1.1.1.1", nil, Allow},
		{"internet off", Policy{}, "1.1.1.1", nil, Deny},
		{"internet off, allowOut IP", Policy{AllowOut: []string{"1.1.1.1"}}, "1.1.1.1", nil, Allow},
		{"allowOut beats denyOut", Policy{Internet: true, DenyOut: []string{"10.0.0.0/8"}, AllowOut: []string{"10.1.0.0/16"}}, "10.1.2.3", nil, Allow},
		{"denyOut", Policy{Internet: true, DenyOut: []string{"10.0.0.0/8"}, AllowOut: []string{"10.1.0.0/16"}}, "10.2.0.1", nil, Deny},
		{"outside denyOut", Policy{Internet: true, DenyOut: []string{"10.0.0.0/8"}}, "11.0.0.1", nil, Allow},
		{"learned allowed name", Policy{Internet: true, DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"api.example.com"}}, "5.5.5.5", []string{"api.example.com"}, AllowIfName},
		{"learned wildcard", Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"*.pypi.org"}}, "5.5.5.5", []string{"files.pypi.org"}, AllowIfName},
		{"wildcard is not the apex", Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"*.pypi.org"}}, "5.5.5.5", []string{"pypi.org"}, Deny},
		{"no lookup, no name", Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"api.example.com"}}, "5.5.5.5", nil, Deny},
		{"learned other name", Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"api.example.com"}}, "5.5.5.5", []string{"evil.com"}, Deny},
		{"case and trailing dot", Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"API.Example.com."}}, "5.5.5.5", []string{"api.example.COM"}, AllowIfName},
		{"IPv6, internet off", Policy{}, "2606:4700::1", nil, Deny},
		{"IPv6, all of IPv4 denied in pieces", Policy{Internet: true, DenyOut: []string{"0.0.0.0/1", "128.0.0.0/1"}}, "2606:4700::1", nil, Deny},
	}
	for _, c := range cases {
		r, err := Compile(c.p)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := r.Decide(a(c.dst), c.learned); got != c.want {
			t.Errorf("%s: Decide(%s, %v) = %v, want %v", c.name, c.dst, c.learned, got, c.want)
		}
	}
}

// TestGuard: every destination that is not globally routable, and the cloud metadata services,
// are refused whatever the policy; IPv6 forms that embed an IPv4 address are judged by it.
func TestGuard(t *testing.T) {
	g := &Guard{}
	for _, c := range []struct{ addr, why string }{
		{"0.1.2.3", "this network"},
		{"10.0.0.1", "RFC 1918"}, {"10.255.255.255", "RFC 1918"},
		{"100.64.0.1", "carrier-grade NAT"}, {"100.127.255.254", "carrier-grade NAT"},
		{"100.100.100.200", "Alibaba"},
		{"127.0.0.1", "loopback"}, {"127.1.2.3", "loopback"},
		{"169.254.169.254", "metadata"}, {"169.254.1.1", "link-local"},
		{"172.16.0.1", "RFC 1918"}, {"172.31.255.255", "RFC 1918"},
		{"192.0.0.8", "IETF protocol assignments"},
		{"192.0.2.1", "TEST-NET-1"},
		{"192.88.99.1", "6to4 relay"},
		{"192.168.0.1", "RFC 1918"}, {"192.168.127.1", "RFC 1918"},
		{"198.18.0.1", "benchmarking"}, {"198.19.255.255", "benchmarking"},
		{"198.51.100.7", "TEST-NET-2"},
		{"203.0.113.9", "TEST-NET-3"},
		{"224.0.0.1", "multicast"}, {"239.255.255.250", "multicast"},
		{"240.0.0.1", "reserved"}, {"255.255.255.255", "limited broadcast"},
		{"168.63.129.16", "Azure"},
		{"::", "unspecified"}, {"::1", "loopback"}, {"::2", "IPv4-compatible"}, {"::a00:1", "IPv4-compatible"},
		{"::ffff:10.1.2.3", "RFC 1918"}, {"::ffff:127.0.0.1", "loopback"}, {"::ffff:169.254.169.254", "metadata"},
		{"64:ff9b::a00:1", "embeds 10.0.0.1"}, {"64:ff9b::7f00:1", "embeds 127.0.0.1"}, {"64:ff9b::a9fe:a9fe", "embeds 169.254.169.254"},
		{"64:ff9b:1::1", "local-use NAT64"},
		{"100::1", "discard-only"},
		{"2001::1", "Teredo"}, {"2001:2::1", "IETF protocol assignments"}, {"2001:1ff::1", "IETF protocol assignments"},
		{"2001:db8::1", "documentation"},
		{"2002:a00:1::1", "embeds 10.0.0.1"}, {"2002:c0a8:101::", "embeds 192.168.1.1"}, {"2002:7f00:1::", "embeds 127.0.0.1"},
		{"fc00::1", "unique local"}, {"fd12:3456::1", "unique local"},
		{"fd00:ec2::254", "AWS"},
		{"fe80::1", "link-local"}, {"fe80::1%eth0", "link-local"},
		{"ff02::1", "multicast"},
		// Globally routable IPv6 is not carried at all.
		{"2606:4700:4700::1111", "IPv4 only"}, {"64:ff9b::101:101", "IPv4 only"}, {"2002:101:101::", "IPv4 only"},
	} {
		why, blocked := g.Blocked(netip.MustParseAddr(c.addr))
		if !blocked || !strings.Contains(why, c.why) {
			t.Errorf("%s: blocked %v (%s), want blocked as %q", c.addr, blocked, why, c.why)
		}
	}
	for _, s := range []string{"1.1.1.1", "8.8.8.8", "9.9.9.9", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
		"192.0.1.1", "192.88.98.1", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255",
		"168.63.129.17", "::ffff:1.1.1.1"} {
		if why, blocked := g.Blocked(netip.MustParseAddr(s)); blocked {
			t.Errorf("%s is public but blocked: %s", s, why)
		}
	}
	// The host's own addresses (here: every one it has).
	g.isHostAddr(netip.Addr{})
	for a := range g.hostAddr {
		if _, blocked := g.Blocked(a); !blocked {
			t.Errorf("host address %s is not blocked", a)
		}
	}
}

// TestGuardExemptions: --net-allow-reserved opens exactly what it names.
func TestGuardExemptions(t *testing.T) {
	ex := &Guard{Exempt: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("169.254.169.254/32")}}
	for _, s := range []string{"10.1.0.0", "10.1.2.3", "10.1.255.255", "::ffff:10.1.2.3", "169.254.169.254"} {
		if why, blocked := ex.Blocked(netip.MustParseAddr(s)); blocked {
			t.Errorf("%s is exempted but blocked: %s", s, why)
		}
	}
	for _, s := range []string{"10.0.255.255", "10.2.0.0", "169.254.169.253", "192.168.1.1", "127.0.0.1",
		"64:ff9b::a01:203", "2002:a01:203::"} { // the exempted addresses through NAT64 or 6to4 are other destinations
		if _, blocked := ex.Blocked(netip.MustParseAddr(s)); !blocked {
			t.Errorf("%s is open, but the exemptions do not name it", s)
		}
	}
	// The host's own addresses stay closed unless named one by one.
	g := &Guard{}
	g.isHostAddr(netip.Addr{})
	for a := range g.hostAddr {
		wide := &Guard{Exempt: []netip.Prefix{netip.PrefixFrom(a, a.BitLen()-8).Masked()}}
		if _, blocked := wide.Blocked(a); !blocked {
			t.Errorf("host address %s is opened by %v", a, wide.Exempt)
		}
		one := &Guard{Exempt: []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}}
		if why, blocked := one.Blocked(a); blocked {
			t.Errorf("host address %s is not opened by %v: %s", a, one.Exempt, why)
		}
	}
}

func TestDeniesAll(t *testing.T) {
	for _, c := range []struct {
		p    Policy
		want bool
	}{
		{Policy{}, true},
		{Policy{Internet: true}, false},
		{Policy{Internet: true, DenyOut: []string{"0.0.0.0/0"}}, true},
		{Policy{Internet: true, DenyOut: []string{"0.0.0.0/1", "128.0.0.0/1"}}, true},
		{Policy{Internet: true, DenyOut: []string{"128.0.0.0/1", "0.0.0.0/2", "64.0.0.0/2"}}, true},
		{Policy{Internet: true, DenyOut: []string{"0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/4", "240.0.0.0/5", "248.0.0.0/5"}}, true},
		{Policy{Internet: true, DenyOut: []string{"0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/4", "240.0.0.0/5"}}, false},
		{Policy{Internet: true, DenyOut: []string{"0.0.0.0/1", "128.0.0.1/32"}}, false},
	} {
		if got := mustCompile(t, c.p).DeniesAll(); got != c.want {
			t.Errorf("%+v: DeniesAll %v", c.p, got)
		}
	}
}

func TestLearnedIsBounded(t *testing.T) {
	var l learned
	for i := range maxLearned + 500 {
		l.add(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), "n.example", 0)
	}
	if len(l.m) > maxLearned {
		t.Fatalf("%d entries, bound %d", len(l.m), maxLearned)
	}
	x := netip.MustParseAddr("10.0.0.1")
	for i := range 200 {
		l.add(x, strings.Repeat("a", i%60+1)+".example", 0)
	}
	if n := len(l.names(x)); n > 64 {
		t.Fatalf("%d names for one address", n)
	}
}

// TestHostAddressesFailClosed: when the host's addresses cannot be listed (net.InterfaceAddrs
// fails, as it does out of file descriptors), the guard keeps the list it had; before it has
// ever had one, it refuses every destination it cannot tell from the host's own.
func TestHostAddressesFailClosed(t *testing.T) {
	hostA, other := netip.MustParseAddr("1.2.3.4"), netip.MustParseAddr("5.6.7.8")
	var fail atomic.Bool
	fail.Store(true)
	g := &Guard{Exempt: []netip.Prefix{netip.MustParsePrefix("9.9.9.9/32")}}
	g.interfaceAddrs = func() ([]net.Addr, error) {
		if fail.Load() {
			return nil, syscall.EMFILE
		}
		return []net.Addr{&net.IPNet{IP: net.IP(hostA.AsSlice()), Mask: net.CIDRMask(24, 32)}}, nil
	}
	for _, a := range []netip.Addr{hostA, other} {
		if why, blocked := g.Blocked(a); !blocked || !strings.Contains(why, "could not be listed") {
			t.Errorf("%s with the host's addresses unknown: %q, %v", a, why, blocked)
		}
	}
	if why, blocked := g.Blocked(netip.MustParseAddr("9.9.9.9")); blocked {
		t.Errorf("an address exempted by itself: %s", why)
	}
	// Listed: only the host's address is refused.
	fail.Store(false)
	g.mu.Lock()
	g.next = time.Time{}
	g.mu.Unlock()
	if why, blocked := g.Blocked(hostA); !blocked || !strings.Contains(why, "host itself") {
		t.Errorf("the host's address: %q, %v", why, blocked)
	}
	if why, blocked := g.Blocked(other); blocked {
		t.Errorf("another address: %s", why)
	}
	// Failing again later: the list it had still holds.
	fail.Store(true)
	g.mu.Lock()
	g.next = time.Time{}
	g.mu.Unlock()
	if why, blocked := g.Blocked(hostA); !blocked || !strings.Contains(why, "host itself") {
		t.Errorf("the host's address once listing fails: %q, %v", why, blocked)
	}
	if why, blocked := g.Blocked(other); blocked {
		t.Errorf("another address once listing fails: %s", why)
	}
}
