package initd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// netConfig is the guest network the host asked for on the kernel command line:
// cell.net=ADDR/PREFIX,GATEWAY,MTU.
type netConfig struct {
	addr *net.IPNet
	gw   net.IP
	mtu  int
}

func parseNetArg(cmdline string) (netConfig, bool, error) {
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, "cell.net=")
		if !ok {
			continue
		}
		parts := strings.Split(v, ",")
		if len(parts) != 3 {
			return netConfig{}, true, fmt.Errorf("cell.net=%s: want ADDR/PREFIX,GATEWAY,MTU", v)
		}
		ip, ipn, err := net.ParseCIDR(parts[0])
		if err != nil {
			return netConfig{}, true, fmt.Errorf("cell.net address: %w", err)
		}
		ipn.IP = ip
		gw := net.ParseIP(parts[1])
		if gw == nil {
			return netConfig{}, true, fmt.Errorf("cell.net gateway %q is not an IP", parts[1])
		}
		mtu, err := strconv.Atoi(parts[2])
		if err != nil || mtu < 576 || mtu > 65535 {
			return netConfig{}, true, fmt.Errorf("cell.net MTU %q is not in 576..65535", parts[2])
		}
		return netConfig{addr: ipn, gw: gw, mtu: mtu}, true, nil
	}
	return netConfig{}, false, nil
}

// networkUp configures eth0 statically (address, MTU, default route) and points the resolver at
// the gateway. The host's network stack is the only thing on the other side, so there is nothing
// to discover; and a snapshot of this guest wakes up with a working network at once.
func networkUp() error {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	cfg, ok, err := parseNetArg(string(b))
	if !ok || err != nil {
		return err
	}
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	if err := netlink.LinkSetMTU(link, cfg.mtu); err != nil {
		return fmt.Errorf("eth0 mtu %d: %w", cfg.mtu, err)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: cfg.addr}); err != nil {
		return fmt.Errorf("eth0 address: %w", err)
	}
	// The sandbox's network is IPv4 only: eth0 gets no IPv6 at all (no link-local address, no
	// router solicitation), so that resolvers and clients use IPv4 as on any IPv4-only host.
	// Loopback keeps ::1, for servers that listen on "::".
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("eth0: disabling IPv6: %w", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("eth0 up: %w", err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.gw}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return os.WriteFile("/etc/resolv.conf", []byte("nameserver "+cfg.gw.String()+"\noptions edns0 trust-ad\n"), 0o644)
}
