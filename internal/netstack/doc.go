// Package netstack owns each sandbox's virtual network: a user-space TCP/IP stack (gVisor's, with
// gvisor-tap-vsock's switch speaking QEMU's stream framing) that the guest's virtio-net device is
// wired to over a unix socket. It is the guest's gateway, DNS resolver and only way out: every TCP
// connection and UDP flow the guest opens is re-made from the host by this package, after the
// sandbox's egress policy (internet on/off, allowOut, denyOut, DNS-learned names, TLS SNI and HTTP
// Host checks, kept on for the connection's life) and the guard (no destination that is not
// globally routable, no cloud metadata service, not the host itself, unless the operator exempted
// it) said yes; a policy update ends what the new policy refuses. It also dials into the guest for
// exposed ports and counts bytes and denied connections.
package netstack
