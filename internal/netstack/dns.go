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

// ServeDNS answers the guest's queries under the sandbox's policy. A name is resolved only if the
// policy could let the guest use the answer (an allowed name, or some destination is reachable
// by address): a sandbox whose policy denies everything else cannot use DNS to leak data to the
// outside. Operator overrides are answered locally, other names by the host's resolvers.
func (n *Network) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := n.answer(req)
	_ = w.WriteMsg(resp)
}

func (n *Network) answer(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	}
	q := req.Question[0]
	name := normName(q.Name)
	rules := n.rules.Load()
	if rules.DeniesAll() && !rules.NameAllowed(name) && len(rules.allowNets) == 0 {
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
	if h, _, err := net.SplitHostPort(name); err == nil {
		name = h
	}
	name = strings.TrimSpace(name)
	return name != "" && rules.NameAllowed(name)
}
