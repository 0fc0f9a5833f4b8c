package channel

import (
	"encoding/binary"
	"io"
)

// yamux frame header: version(1) type(1) flags(2) stream(4) length(4).
const (
	headerSize   = 12
	typeData     = 0
	maxCoalesced = 64 << 10
)

// coalescer joins each yamux data-frame header with the body that follows it into one write.
// yamux writes them separately, and on a virtio-serial port every write is a virtqueue kick (a
// VM exit and a trip through QEMU's main loop), so halving the writes halves that cost. Writes
// come from yamux's single send loop, so no locking is needed.
type coalescer struct {
	w   io.Writer
	hdr [headerSize]byte
	buf []byte
	// held is set while a data-frame header waits for its body.
	held bool
}

func (c *coalescer) Write(p []byte) (int, error) {
	if c.held {
		c.held = false
		if len(p) <= maxCoalesced {
			c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
			if _, err := c.w.Write(c.buf); err != nil {
				return 0, err
			}
			return len(p), nil
		}
		if _, err := c.w.Write(c.hdr[:]); err != nil {
			return 0, err
		}
		return c.w.Write(p)
	}
	if len(p) == headerSize && p[1] == typeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	return c.w.Write(p)
}
