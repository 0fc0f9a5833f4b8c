package netstack

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Policy is a sandbox's egress policy in E2B's terms.
type Policy struct {
	// Internet false denies every destination an AllowOut entry does not allow.
	Internet bool
	// AllowOut entries are CIDRs, bare IPs, domain names or "*."-wildcard names; they always
	// take precedence over DenyOut.
	AllowOut []string
	// DenyOut entries are CIDRs or bare IPs.
	DenyOut []string
}

// Rules is a compiled Policy.
type Rules struct {
	policy     Policy
	allowNets  []netip.Prefix
	allowNames []string // exact names, or ".suffix" for "*.suffix"
	denyNets   []netip.Prefix
	deniesAll  bool
}

// AllTraffic is the CIDR that covers every IPv4 address.
var AllTraffic = netip.MustParsePrefix("0.0.0.0/0")

// Compile checks p; errors name the offending field and entry.
func Compile(p Policy) (*Rules, error) {
	r := &Rules{policy: p}
	var errs []error
	for i, e := range p.AllowOut {
		if pfx, ok := parseNet(e); ok {
			r.allowNets = append(r.allowNets, pfx)
			continue
		}
		name, err := parseName(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("network.allowOut[%d]: %q is neither a CIDR, an IPv4 address nor a domain name: %w", i, e, err))
			continue
		}
		r.allowNames = append(r.allowNames, name)
	}
	for i, e := range p.DenyOut {
		pfx, ok := parseNet(e)
		if !ok {
			if _, err := parseName(e); err == nil {
				errs = append(errs, fmt.Errorf("network.denyOut[%d]: %q is a domain name; denyOut takes only CIDRs and IP addresses (deny everything with 0.0.0.0/0 and allow names with allowOut)", i, e))
			} else {
				errs = append(errs, fmt.Errorf("network.denyOut[%d]: %q is not a CIDR or an IPv4 address", i, e))
			}
			continue
		}
		r.denyNets = append(r.denyNets, pfx)
	}
	if !p.Internet {
		r.denyNets = append(r.denyNets, AllTraffic)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	r.deniesAll = coversIPv4(r.denyNets)
	return r, nil
}

// Policy returns the policy r was compiled from.
func (r *Rules) Policy() Policy { return r.policy }

func parseNet(s string) (netip.Prefix, bool) {
	if pfx, err := netip.ParsePrefix(s); err == nil && pfx.Addr().Is4() {
		return pfx.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return netip.PrefixFrom(a, 32), true
	}
	return netip.Prefix{}, false
}

// parseName validates a domain name or "*." wildcard; it returns the name in matching form.
func parseName(s string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	wild := strings.HasPrefix(name, "*.")
	if wild {
		name = name[2:]
	}
	if name == "" || len(name) > 253 {
		return "", errors.New("empty or longer than 253 characters")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", errors.New("a label is empty or longer than 63 characters")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("character %q is not allowed in a name", c)
			}
		}
	}
	labels := strings.Split(name, ".")
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", errors.New("looks like an IPv4 address but is not a valid one")
	}
	if wild {
		return "." + name, nil
	}
	return name, nil
}

// normName lowercases a name and drops a trailing dot.
func normName(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// NameAllowed says whether an allowOut name rule covers name.
func (r *Rules) NameAllowed(name string) bool {
	name = normName(name)
	for _, n := range r.allowNames {
		if n == name || (n[0] == '.' && strings.HasSuffix(name, n)) {
			return true
		}
	}
	return false
}

// HasNames says whether any allowOut entry is a name.
func (r *Rules) HasNames() bool { return len(r.allowNames) > 0 }

// DeniesAll says whether every address not allowed by an allowOut CIDR is denied, i.e. only
// allowOut opens the way out: denyOut covers all of IPv4, with 0.0.0.0/0 or with pieces.
func (r *Rules) DeniesAll() bool { return r.deniesAll }

// coversIPv4 says whether the union of ps is the whole IPv4 space.
func coversIPv4(ps []netip.Prefix) bool {
	type span struct{ lo, hi uint64 } // [lo, hi)
	var spans []span
	for _, p := range ps {
		if !p.Addr().Is4() {
			continue
		}
		b := p.Masked().Addr().As4()
		lo := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		spans = append(spans, span{lo, lo + 1<<(32-p.Bits())})
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	var reach uint64 // everything below reach is covered
	for _, s := range spans {
		if s.lo > reach {
			return false
		}
		reach = max(reach, s.hi)
	}
	return reach == 1<<32
}

// Verdict is what the policy says of a destination.
type Verdict int

// The verdicts.
const (
	Deny Verdict = iota
	Allow
	// AllowIfName admits a connection only if what it names (TLS SNI, HTTP Host) is an
	// allowed name: the address is reachable only because an allowed name resolved to it.
	AllowIfName
)

func (v Verdict) String() string {
	return [...]string{"deny", "allow", "allow-if-name"}[v]
}

// Decide judges a connection to dst; learned are the names the sandbox's own DNS resolved to dst.
func (r *Rules) Decide(dst netip.Addr, learned []string) Verdict {
	for _, p := range r.allowNets {
		if p.Contains(dst) {
			return Allow
		}
	}
	// Policies name IPv4 only; an IPv6 destination (never carried, see Guard) is denied
	// whenever IPv4 is.
	denied := !dst.Is4() && r.deniesAll
	for _, p := range r.denyNets {
		if p.Contains(dst) {
			denied = true
			break
		}
	}
	if !denied {
		return Allow
	}
	for _, n := range learned {
		if r.NameAllowed(n) {
			return AllowIfName
		}
	}
	return Deny
}
