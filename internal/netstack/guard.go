package netstack

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Guard holds what no sandbox may reach whatever its policy says: the host's loopback and its own
// addresses (where `cell serve` and everything else on the host listen), link-local addresses
// (cloud metadata services), multicast, broadcast, "this network", and the sandboxes' own subnet.
// The operator may exempt prefixes explicitly.
type Guard struct {
	// Exempt prefixes are reachable although reserved (an operator's explicit choice).
	Exempt []netip.Prefix

	mu       sync.Mutex
	hostAddr map[netip.Addr]bool
	fetched  time.Time
}

var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"), // includes 255.255.255.255
	Subnet,
}

// hostAddrTTL bounds how stale the list of the host's own addresses may be.
const hostAddrTTL = 5 * time.Second

// Blocked says whether a is reserved, and why.
func (g *Guard) Blocked(a netip.Addr) (string, bool) {
	for _, p := range g.Exempt {
		if p.Contains(a) {
			return "", false
		}
	}
	if !a.Is4() {
		return "not an IPv4 address", true
	}
	for _, p := range reserved {
		if p.Contains(a) {
			return "reserved address " + p.String(), true
		}
	}
	if g.isHostAddr(a) {
		return "an address of the host itself", true
	}
	return "", false
}

func (g *Guard) isHostAddr(a netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hostAddr == nil || time.Since(g.fetched) > hostAddrTTL {
		m := map[netip.Addr]bool{}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, ad := range addrs {
				if ipn, ok := ad.(*net.IPNet); ok {
					if x, ok := netip.AddrFromSlice(ipn.IP); ok {
						m[x.Unmap()] = true
					}
				}
			}
		}
		g.hostAddr, g.fetched = m, time.Now()
	}
	return g.hostAddr[a]
}
