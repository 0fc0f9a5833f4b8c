package netstack

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Resolver is what every sandbox's DNS server asks: operator overrides first, else the host's
// upstream resolvers.
type Resolver struct {
	// Hosts are operator overrides: fully qualified lower-case names (no trailing dot) to an
	// address. Sandboxes resolve them without asking upstream.
	Hosts map[string]netip.Addr
	// Upstream are "ip:port" resolvers (the host's, from /etc/resolv.conf).
	Upstream []string
	// Timeout bounds one upstream exchange.
	Timeout time.Duration
}

// HostResolvers reads the host's resolvers from resolv.conf.
func HostResolvers(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out, nil
}

func (r *Resolver) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	var lastErr error = errNoUpstream
	for _, up := range r.Upstream {
		c := &dns.Client{Net: "udp", Timeout: timeout}
		resp, _, err := c.ExchangeContext(ctx, q, up)
		if err == nil && resp.Truncated {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, q, up)
		}
		if err == nil {
			return resp, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

type dnsError string

func (e dnsError) Error() string { return string(e) }

const errNoUpstream = dnsError("no upstream resolver")

// learned remembers which names the sandbox's DNS resolved to which address, so that a
// connection to that address can be admitted by an allowOut name. Bounded.
type learned struct {
	mu sync.Mutex
	m  map[netip.Addr]map[string]time.Time
}

const (
	maxLearned     = 4096
	minLearnedLife = 10 * time.Minute // programs keep addresses longer than DNS TTLs say
)

func (l *learned) add(a netip.Addr, name string, ttl time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.m == nil {
		l.m = map[netip.Addr]map[string]time.Time{}
	}
	if _, ok := l.m[a]; !ok && len(l.m) >= maxLearned {
		l.evict(now)
	}
	names := l.m[a]
	if names == nil {
		names = map[string]time.Time{}
		l.m[a] = names
	}
	if len(names) >= 64 {
		return
	}
	names[name] = now.Add(max(ttl, minLearnedLife))
}

// evict drops expired entries, and if none were, an arbitrary tenth of the table.
func (l *learned) evict(now time.Time) {
	n := len(l.m)
	for a, names := range l.m {
		for name, exp := range names {
			if now.After(exp) {
				delete(names, name)
			}
		}
		if len(names) == 0 {
			delete(l.m, a)
		}
	}
	if len(l.m) < n {
		return
	}
	drop := max(n/10, 1)
	for a := range l.m {
		if drop == 0 {
			break
		}
		delete(l.m, a)
		drop--
	}
}

func (l *learned) names(a netip.Addr) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	var out []string
	for name, exp := range l.m[a] {
		if now.Before(exp) {
			out = append(out, name)
		}
	}
	return out
}

// ServeDNS answers the guest's queries under the sandbox's policy. With the internet off (denyOut
// covering all of IPv4), a name is resolved only if an allowOut name rule allows it: a sandbox
// whose policy denies everything else cannot use DNS to leak data to the outside. Operator
// overrides are answered locally, other names by the host's resolvers. What an answer says is
// not checked: the connection to the address is (a name resolving to a private address opens
// nothing).
func (n *Network) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := n.answer(req)
	// Over UDP an answer fits what the guest said it takes (512 bytes, or its EDNS0 size up
	// to 4096); the rest is truncated, and the guest asks again over TCP.
	if w.LocalAddr() != nil && w.LocalAddr().Network() == "udp" {
		resp.Truncate(udpAnswerSize(req))
	} else {
		resp.Truncate(dns.MaxMsgSize)
	}
	_ = w.WriteMsg(resp)
}

// udpAnswerSize is the largest answer req's sender takes over UDP.
func udpAnswerSize(req *dns.Msg) int {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = max(size, min(int(opt.UDPSize()), 4096))
	}
	return size
}

func (n *Network) answer(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	}
	q := req.Question[0]
	name := normName(q.Name)
	rules := n.rules.Load()
	// With every address denied but what allowOut names, only names allowOut allows resolve:
	// an allowed CIDR is reached by address, and resolving every other name would let the
	// guest talk to the world through the host's resolvers (E2B's sandboxes then have no DNS
	// at all unless a domain is allowed). The name must be a plain host name: in presentation
	// form an escaped dot ("a\.example.com") would match a suffix it is not under.
	if rules.DeniesAll() && !(validHostName(name) && rules.NameAllowed(name)) {
		n.stats.dnsRefused.Add(1)
		return resp.SetRcode(req, dns.RcodeRefused)
	}
	if ip, ok := n.cfg.Resolver.Hosts[name]; ok {
		resp.SetReply(req)
		resp.Authoritative = true
		if q.Qtype == dns.TypeA && q.Qclass == dns.ClassINET {
			resp.Answer = append(resp.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   ip.AsSlice(),
			})
			n.learned.add(ip, name, time.Minute)
		}
		return resp
	}
	if n.dnsInFlight.Add(1) > maxDNSInFlight {
		n.dnsInFlight.Add(-1)
		return resp.SetRcode(req, dns.RcodeServerFailure)
	}
	defer n.dnsInFlight.Add(-1)
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	up, err := n.cfg.Resolver.exchange(ctx, req)
	if err != nil {
		n.log.Debug("upstream DNS failed", "name", name, "err", err)
		return resp.SetRcode(req, dns.RcodeServerFailure)
	}
	for _, rr := range up.Answer {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A); ok {
				n.learned.add(ip.Unmap(), name, time.Duration(a.Hdr.Ttl)*time.Second)
			}
		}
	}
	up.Id = req.Id
	return up
}

// matchHostName says whether name (SNI or HTTP Host, maybe with a port) is allowed by rules.
func matchHostName(rules *Rules, name string) bool {
	host, ok := splitHost(name)
	return ok && rules.NameAllowed(host)
}

// splitHost returns the host name of a TLS server name or an HTTP Host ("name" or
// "name:port"); ok is false unless the name is a well-formed host name (see validHostName).
func splitHost(s string) (string, bool) {
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		port := s[i+1:]
		if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return "", false
		}
		s = s[:i]
	}
	if !validHostName(s) {
		return "", false
	}
	return normName(s), true
}

// validHostName says whether s is a DNS host name: dot-separated labels of letters, digits,
// '-' and '_', 1-63 bytes each, 253 in all, with at most a trailing dot, the last one not all
// digits (an address is not a name).
func validHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	// A name whose last label is all digits is an IPv4 address (or no name at all).
	last := s[strings.LastIndexByte(s, '.')+1:]
	return label > 0 && strings.Trim(last, "0123456789") != ""
}
