package netstack

import (
	"net/netip"
	"strconv"
)

// The guest side of every sandbox's network. Each sandbox has a network of its own, so all of them
// use the same addresses: a snapshot restored, resumed or forked finds its interface, address,
// route and resolver already right, with no DHCP on the critical path.
var (
	Subnet    = netip.MustParsePrefix("192.168.127.0/24")
	GatewayIP = netip.MustParseAddr("192.168.127.1")
	GuestIP   = netip.MustParseAddr("192.168.127.2")
)

// MAC addresses of the gateway and of the guest's virtio-net device.
const (
	GatewayMAC = "5a:94:ef:e4:0c:dd"
	GuestMAC   = "5a:94:ef:e4:0c:ee"
)

// MTU of the virtual link. QEMU's stream backend passes no offloads (no TSO), so each guest
// segment is one frame: a 64 KiB MTU makes bulk transfers ~40x fewer frames than 1500.
const MTU = 65520

// KernelArg tells envd how to configure the guest's interface: address/prefix, gateway, MTU.
func KernelArg() string {
	return "cell.net=" + netip.PrefixFrom(GuestIP, Subnet.Bits()).String() + "," + GatewayIP.String() + "," + strconv.Itoa(MTU)
}
