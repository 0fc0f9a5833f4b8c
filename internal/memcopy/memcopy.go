package memcopy

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// piece is the largest copy Go's memmove does without REP MOVSx (with SSE moves, which do not
// care about alignment).
const piece = 2048

// Copy copies src into dst and returns the number of bytes copied, as copy does, without the
// byte-at-a-time path: a block whose source and destination are misaligned by the same amount
// is aligned with a short copy first; other misaligned blocks are copied in pieces of 2 KiB.
func Copy(dst, src []byte) int {
	if cpu.X86.HasAVX {
		return copy(dst, src) // memmove takes its AVX path, which does not mind alignment
	}
	return copyNoAVX(dst, src)
}

func copyNoAVX(dst, src []byte) int {
	n := min(len(dst), len(src))
	if n <= piece {
		return copy(dst, src)
	}
	d, s := uintptr(unsafe.Pointer(&dst[0])), uintptr(unsafe.Pointer(&src[0]))
	if (d|s)&7 == 0 || (d < s+uintptr(n) && s < d+uintptr(n)) {
		return copy(dst, src) // aligned, or overlapping (memmove's order matters)
	}
	if (d-s)&7 == 0 {
		head := int(-d & 7)
		copy(dst[:head], src[:head])
		copy(dst[head:n], src[head:n])
		return n
	}
	for o := 0; o < n; o += piece {
		e := min(o+piece, n)
		copy(dst[o:e], src[o:e])
	}
	return n
}
