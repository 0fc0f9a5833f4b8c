package memcopy

import (
	"bytes"
	"testing"
)

// TestCopy: without AVX (the guest's case), every length, offset and overlap copies what copy
// does; Copy itself is copy where memmove has AVX., offset and overlap copies what copy does.
func TestCopy(t *testing.T) {
	src := make([]byte, 3*piece+64)
	for i := range src {
		src[i] = byte(i*7 + i/251)
	}
	for _, n := range []int{0, 1, 7, piece - 1, piece, piece + 1, 2*piece + 5, 3 * piece} {
		for so := 0; so < 16; so++ {
			for do := 0; do < 16; do++ {
				want := make([]byte, len(src)+16)
				got := make([]byte, len(src)+16)
				wn := copy(want[do:do+n], src[so:so+n])
				gn := copyNoAVX(got[do:do+n], src[so:so+n])
				if wn != gn || !bytes.Equal(want, got) {
					t.Fatalf("n=%d src+%d dst+%d: copied %d, want %d; bytes differ: %v", n, so, do, gn, wn, !bytes.Equal(want, got))
				}
			}
		}
	}
	if n := Copy(make([]byte, 3000), src[1:2501]); n != 2500 {
		t.Fatalf("Copy copied %d of 2500", n)
	}
	// Shorter destination or source.
	if n := copyNoAVX(make([]byte, 3000), src[:2500]); n != 2500 {
		t.Fatalf("copied %d of 2500", n)
	}
	// Overlapping, both directions, misaligned.
	for _, shift := range []int{3, -3, 9, -9} {
		buf := append([]byte(nil), src...)
		want := append([]byte(nil), src...)
		a, b := 16, 16+shift
		copy(want[b:b+2*piece], want[a:a+2*piece])
		copyNoAVX(buf[b:b+2*piece], buf[a:a+2*piece])
		if !bytes.Equal(buf, want) {
			t.Fatalf("overlap shift %d: bytes differ", shift)
		}
	}
}

func BenchmarkCopyMisaligned(b *testing.B) {
	src := make([]byte, 256<<10+8)
	dst := make([]byte, 256<<10+8)
	b.SetBytes(256 << 10)
	for range b.N {
		copyNoAVX(dst[:256<<10], src[4:4+256<<10])
	}
}
