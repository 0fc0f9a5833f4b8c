package channel

import (
	"bytes"
	"encoding/binary"
	"testing"
)

type recorder struct{ writes [][]byte }

func (r *recorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func header(typ byte, length uint32) []byte {
	h := make([]byte, headerSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestCoalescerJoinsDataHeaderAndBody(t *testing.T) {
	r := &recorder{}
	c := &coalescer{w: r}
	body := []byte("hello")
	for _, p := range [][]byte{header(typeData, 5), body, header(1, 4096) /* window update: no body */, header(typeData, 0) /* SYN only */} {
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	if len(r.writes) != 3 {
		t.Fatalf("%d writes, want 3: %q", len(r.writes), r.writes)
	}
	if !bytes.Equal(r.writes[0], append(header(typeData, 5), body...)) {
		t.Errorf("first write %q", r.writes[0])
	}
	if !bytes.Equal(r.writes[1], header(1, 4096)) || !bytes.Equal(r.writes[2], header(typeData, 0)) {
		t.Errorf("header-only frames changed: %q", r.writes[1:])
	}
	// A body larger than the coalescing bound goes out as header then body, unchanged.
	big := make([]byte, maxCoalesced+1)
	_, _ = c.Write(header(typeData, uint32(len(big))))
	_, _ = c.Write(big)
	if len(r.writes) != 5 || len(r.writes[3]) != headerSize || len(r.writes[4]) != len(big) {
		t.Fatalf("big frame: %d writes", len(r.writes))
	}
}
