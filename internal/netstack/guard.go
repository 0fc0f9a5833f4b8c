package netstack

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Guard holds what no sandbox may reach whatever its policy says: every destination that is not
// globally routable (the host's loopback, private networks, carrier-grade NAT, link-local,
// documentation and benchmarking ranges, multicast, broadcast, "this network", IPv6's special
// ranges), the cloud metadata services, and the host's own addresses (where `cell serve` and
// everything else on the host listen). The operator may exempt prefixes explicitly.
type Guard struct {
	// Exempt prefixes are reachable although reserved (an operator's explicit choice). The
	// host's own addresses are opened only by an exemption naming the address alone (a /32 or
	// /128): opening a private network the host sits in does not open the host.
	Exempt []netip.Prefix

	// interfaceAddrs lists the host's addresses (nil: net.InterfaceAddrs).
	interfaceAddrs func() ([]net.Addr, error)

	mu       sync.Mutex
	hostAddr map[netip.Addr]bool // nil until listed once
	listErr  error               // why the last listing failed, if it did
	next     time.Time           // when to list them again
}

// reservedRange is a range no sandbox reaches unless exempted, and why.
type reservedRange struct {
	prefix netip.Prefix
	why    string
}

func rr(cidr, why string) reservedRange {
	return reservedRange{prefix: netip.MustParsePrefix(cidr), why: why}
}

// reservedRanges are the destinations that are not globally routable (IANA's special-purpose
// registries, RFC 6890 and its updates) plus the cloud metadata services that sit in public or
// private space. More specific entries come first, so that the reason given is the precise one.
// IPv4-mapped IPv6 addresses are judged as the IPv4 address they are; NAT64 (64:ff9b::/96) and
// 6to4 (2002::/16) addresses also by the IPv4 address they embed.
var reservedRanges = []reservedRange{
	// Cloud metadata services.
	rr("100.100.100.200/32", "cloud metadata service (Alibaba Cloud)"),
	rr("168.63.129.16/32", "cloud metadata service (Azure)"),
	rr("fd00:ec2::254/128", "cloud metadata service (AWS, IPv6)"),
	rr("169.254.169.254/32", "cloud metadata service (link-local)"),

	// IPv4.
	rr("0.0.0.0/8", `"this network" (RFC 791)`),
	rr("10.0.0.0/8", "private network (RFC 1918)"),
	rr("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
	rr("127.0.0.0/8", "loopback"),
	rr("169.254.0.0/16", "link-local"),
	rr("172.16.0.0/12", "private network (RFC 1918)"),
	rr("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
	rr("192.0.2.0/24", "documentation (TEST-NET-1)"),
	rr("192.88.99.0/24", "6to4 relay anycast (RFC 7526)"),
	rr("192.168.0.0/16", "private network (RFC 1918)"),
	rr("198.18.0.0/15", "benchmarking (RFC 2544)"),
	rr("198.51.100.0/24", "documentation (TEST-NET-2)"),
	rr("203.0.113.0/24", "documentation (TEST-NET-3)"),
	rr("224.0.0.0/4", "multicast"),
	rr("255.255.255.255/32", "limited broadcast"),
	rr("240.0.0.0/4", "reserved (RFC 1112)"),

	// IPv6.
	rr("::/128", "unspecified address"),
	rr("::1/128", "loopback"),
	rr("::/96", "IPv4-compatible (deprecated)"),
	rr("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
	rr("100::/64", "discard-only (RFC 6666)"),
	rr("2001::/23", "IETF protocol assignments (Teredo, benchmarking, ORCHID; RFC 2928)"),
	rr("2001:db8::/32", "documentation"),
	rr("3fff::/20", "documentation (RFC 9637)"),
	rr("5f00::/16", "segment routing SIDs (RFC 9602)"),
	rr("fc00::/7", "unique local (RFC 4193)"),
	rr("fe80::/10", "link-local"),
	rr("fec0::/10", "site-local (deprecated)"),
	rr("ff00::/8", "multicast"),
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// hostAddrTTL bounds how stale the list of the host's own addresses may be; hostAddrRetry is
// how soon a listing that failed is tried again (meanwhile the previous list holds).
const (
	hostAddrTTL   = 5 * time.Second
	hostAddrRetry = time.Second
)

// Blocked says whether a is reserved, and why. The sandbox network carries IPv4 only: an IPv6
// destination outside the reserved ranges is blocked too, unless exempted.
func (g *Guard) Blocked(a netip.Addr) (string, bool) { return g.check(a, true) }

// Reserved is Blocked for the host's own connections made on a user's behalf (a registry a
// template build names): the same ranges, but public IPv6 addresses pass.
func (g *Guard) Reserved(a netip.Addr) (string, bool) { return g.check(a, false) }

func (g *Guard) check(a netip.Addr, v4only bool) (string, bool) {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return "not an IP address", true
	}
	host, listErr := g.isHostAddr(a)
	if listErr != nil {
		host = true // it may be: fail closed
	}
	for _, p := range g.Exempt {
		if p.Contains(a) && (!host || p.IsSingleIP()) {
			return "", false
		}
	}
	if why, ok := reservedWhy(a); ok {
		return why, true
	}
	if listErr != nil {
		return "the host's own addresses could not be listed (" + listErr.Error() + "), and this may be one", true
	}
	if host {
		return "an address of the host itself", true
	}
	if v4only && !a.Is4() {
		return "IPv6 (the sandbox network carries IPv4 only)", true
	}
	return "", false
}

// reservedWhy says whether a (unmapped) is in a reserved range, judging NAT64 and 6to4
// addresses by the IPv4 address they embed.
func reservedWhy(a netip.Addr) (string, bool) {
	for _, r := range reservedRanges {
		if r.prefix.Contains(a) {
			return "reserved address " + r.prefix.String() + ": " + r.why, true
		}
	}
	if a.Is6() {
		b := a.As16()
		var v4 netip.Addr
		switch {
		case nat64.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		case sixToFour.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		default:
			return "", false
		}
		if why, ok := reservedWhy(v4); ok {
			return "embeds " + v4.String() + ", " + why, true
		}
	}
	return "", false
}

// isHostAddr says whether a is one of the host's own addresses, as listed at most hostAddrTTL
// ago. A listing that fails (net.InterfaceAddrs runs out of file descriptors, say) keeps the
// previous list; before any listing has succeeded, it returns the error: nothing is known.
func (g *Guard) isHostAddr(a netip.Addr) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now := time.Now(); !now.Before(g.next) {
		list := g.interfaceAddrs
		if list == nil {
			list = net.InterfaceAddrs
		}
		addrs, err := list()
		if err != nil {
			g.listErr, g.next = err, now.Add(hostAddrRetry)
		} else {
			m := map[netip.Addr]bool{}
			for _, ad := range addrs {
				if ipn, ok := ad.(*net.IPNet); ok {
					if x, ok := netip.AddrFromSlice(ipn.IP); ok {
						m[x.Unmap()] = true
					}
				}
			}
			g.hostAddr, g.listErr, g.next = m, nil, now.Add(hostAddrTTL)
		}
	}
	if g.hostAddr == nil {
		return false, g.listErr
	}
	return g.hostAddr[a], nil
}
