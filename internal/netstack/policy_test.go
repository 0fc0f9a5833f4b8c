package netstack

import (
	"net/netip"
	"strings"
	"testing"
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

func TestGuard(t *testing.T) {
	g := &Guard{}
	for _, s := range []string{"127.0.0.1", "127.1.2.3", "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.168.127.1", "192.168.127.2"} {
		if _, blocked := g.Blocked(netip.MustParseAddr(s)); !blocked {
			t.Errorf("%s is not blocked", s)
		}
	}
	if _, blocked := g.Blocked(netip.MustParseAddr("203.0.113.7")); blocked {
		t.Error("a public address is blocked")
	}
	// The host's own addresses (here: every one it has).
	g.isHostAddr(netip.Addr{})
	for a := range g.hostAddr {
		if _, blocked := g.Blocked(a); !blocked {
			t.Errorf("host address %s is not blocked", a)
		}
	}
	ex := &Guard{Exempt: []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32")}}
	if _, blocked := ex.Blocked(netip.MustParseAddr("169.254.169.254")); blocked {
		t.Error("an exempted address is blocked")
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
