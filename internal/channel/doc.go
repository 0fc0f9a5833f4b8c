// Package channel owns the host–guest link: a byte stream (on the host, QEMU's unix socket behind
// a virtio-serial port; in the guest, the port's character device) on which a small line-based
// handshake runs, then a yamux session that carries one HTTP connection per stream.
//
// The handshake exists because QEMU accepts the host's connection before the guest has opened its
// port, and what the host writes in that window may be lost. So the host pings until the guest
// answers:
//
//	host → guest  CELL1 PING <n>     (repeated every PingInterval)
//	guest → host  CELL1 PONG <n>     (for every ping it sees)
//	host → guest  CELL1 TIME <ns>    (the host's wall clock)
//	host → guest  CELL1 SEED <u64>   (SeedWords lines of fresh randomness)
//	host → guest  CELL1 GO <n>       (n of the first pong; the host stops pinging)
//	guest → host  CELL1 READY <n>    (then yamux; the host drops stray pongs until READY)
//
// Lines that are not exactly one of these are skipped, so a ping cut by the lossy window does no
// harm. The host bounds what it reads from the guest during the handshake: the guest is hostile.
package channel
