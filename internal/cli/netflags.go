package cli

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/netstack"
)

// netFlags are the operator's network settings for sandboxes.
type netFlags struct {
	dnsHosts  []string
	hostsFile string
	exempt    []string
}

func (f *netFlags) register(c *cobra.Command) {
	c.Flags().StringArrayVar(&f.dnsHosts, "dns-host", nil, "NAME=IP: sandboxes resolve NAME to IP (repeatable)")
	c.Flags().StringVar(&f.hostsFile, "dns-hosts-file", "", "a hosts(5) file of names sandboxes resolve to fixed addresses")
	registerExempt(c, &f.exempt)
}

// registerExempt adds --net-allow-reserved to c.
func registerExempt(c *cobra.Command, exempt *[]string) {
	c.Flags().StringArrayVar(exempt, "net-allow-reserved", nil,
		"CIDR or IP of non-public destinations sandboxes may reach anyway: private networks, link-local, cloud metadata… "+
			"(the host's own addresses only when named one by one) (repeatable)")
}

// parseExempt checks --net-allow-reserved's values.
func parseExempt(values []string) ([]netip.Prefix, error) {
	var exempt []netip.Prefix
	for _, e := range values {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			a, aerr := netip.ParseAddr(e)
			if aerr != nil {
				return nil, fmt.Errorf("--net-allow-reserved %q: not a CIDR or IP", e)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		exempt = append(exempt, p.Masked())
	}
	return exempt, nil
}

// parse checks the flags and returns the overrides and exemptions.
func (f *netFlags) parse() (map[string]netip.Addr, []netip.Prefix, error) {
	hosts := map[string]netip.Addr{}
	add := func(where, name, ip string) error {
		a, err := netip.ParseAddr(ip)
		if err != nil || !a.Is4() {
			return fmt.Errorf("%s: %q is not an IPv4 address", where, ip)
		}
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		if name == "" || strings.ContainsAny(name, " /\t") {
			return fmt.Errorf("%s: %q is not a host name", where, name)
		}
		hosts[name] = a
		return nil
	}
	if f.hostsFile != "" {
		file, err := os.Open(f.hostsFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--dns-hosts-file: %w", err)
		}
		defer func() { _ = file.Close() }()
		sc := bufio.NewScanner(file)
		for line := 1; sc.Scan(); line++ {
			text, _, _ := strings.Cut(sc.Text(), "#")
			fields := strings.Fields(text)
			if len(fields) == 0 {
				continue
			}
			if len(fields) < 2 {
				return nil, nil, fmt.Errorf("--dns-hosts-file %s:%d: want \"IP NAME [NAME]\"", f.hostsFile, line)
			}
			for _, name := range fields[1:] {
				if err := add(fmt.Sprintf("--dns-hosts-file %s:%d", f.hostsFile, line), name, fields[0]); err != nil {
					return nil, nil, err
				}
			}
		}
		if err := sc.Err(); err != nil {
			return nil, nil, fmt.Errorf("--dns-hosts-file: %w", err)
		}
	}
	for _, h := range f.dnsHosts {
		name, ip, ok := strings.Cut(h, "=")
		if !ok {
			return nil, nil, fmt.Errorf("--dns-host %q: want NAME=IP", h)
		}
		if err := add("--dns-host", name, ip); err != nil {
			return nil, nil, err
		}
	}
	exempt, err := parseExempt(f.exempt)
	if err != nil {
		return nil, nil, err
	}
	return hosts, exempt, nil
}

// egressFlags are a sandbox's egress policy on the command line.
type egressFlags struct {
	noInternet bool
	allowOut   []string
	denyOut    []string
}

func (f *egressFlags) register(c *cobra.Command) {
	c.Flags().BoolVar(&f.noInternet, "no-internet", false, "no connection leaves the sandbox except to --allow-out")
	c.Flags().StringArrayVar(&f.allowOut, "allow-out", nil, "CIDR, IP, domain or *.domain the sandbox may reach; beats --deny-out (repeatable)")
	c.Flags().StringArrayVar(&f.denyOut, "deny-out", nil, "CIDR or IP the sandbox may not reach (repeatable)")
}

func (f *egressFlags) policy() netstack.Policy {
	return netstack.Policy{Internet: !f.noInternet, AllowOut: f.allowOut, DenyOut: f.denyOut}
}
