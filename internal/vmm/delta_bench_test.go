package vmm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkCopyRAMInPlace saves 256 MiB of private copies in place (the pause of a resumed VM),
// this process standing in for QEMU.
func BenchmarkCopyRAMInPlace(b *testing.B) {
	const size = 256 << 20
	f, mem := mappedFile(b, filepath.Join(b.TempDir(), "ram"), size)
	m, err := findMapping(os.Getpid(), f, size)
	if err != nil {
		b.Fatal(err)
	}
	defer m.close()
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		for p := 0; p < size; p += 4096 {
			mem[p] = byte(i + 1) // every page written since the last save
		}
		if _, err := copyRAM(context.Background(), m, nil, &writeback{f: f}, size); err != nil {
			b.Fatal(err)
		}
	}
}
