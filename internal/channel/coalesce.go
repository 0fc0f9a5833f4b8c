package channel

import (
	"encoding/binary"
	"io"

	"github.com/cellhq/cell/internal/memcopy"
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

// bodyAt is where a frame's body goes in buf: 8-byte aligned (after 4 bytes of padding and the
// header), so that copying a body in is not a misaligned block copy (see memcopy).
const bodyAt = 4 + headerSize

func (c *coalescer) Write(p []byte) (int, error) {
	if c.held {
		c.held = false
		if len(p) <= maxCoalesced {
			if c.buf == nil {
				c.buf = make([]byte, bodyAt+maxCoalesced)
			}
			copy(c.buf[bodyAt-headerSize:bodyAt], c.hdr[:])
			memcopy.Copy(c.buf[bodyAt:bodyAt+len(p)], p)
			if _, err := c.w.Write(c.buf[bodyAt-headerSize : bodyAt+len(p)]); err != nil {
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
