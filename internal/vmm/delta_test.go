package vmm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// mappedFile creates a sparse file of size bytes whose pages 10 to 19 hold data (page p is all
// p), and maps it privately, as QEMU maps a VM's memory file. Both go with the test.
func mappedFile(t testing.TB, path string, size int) (*os.File, []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	for p := 10; p < 20; p++ {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(p)}, 4096), int64(p*4096)); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(mem) })
	return f, mem
}

// TestCopyRAM saves a private mapping of this test's own: the pages written through it come
// from memory (zero ones as holes), the others from the file, holes stay holes.
func TestCopyRAM(t *testing.T) {
	const ps, pages = 4096, 1024
	const size = ps * pages
	dir := t.TempDir()
	src, mem := mappedFile(t, filepath.Join(dir, "src"), size)
	if _, err := src.WriteAt(make([]byte, ps), 100*ps); err != nil { // zeros, but data
		t.Fatal(err)
	}
	// In the second half (copyRAM's second worker): a data page never written through the
	// mapping, and a hole written.
	if _, err := src.WriteAt(bytes.Repeat([]byte{0x66}, ps), 600*ps); err != nil {
		t.Fatal(err)
	}
	copy(mem[15*ps:], bytes.Repeat([]byte{0xaa}, ps))   // a data page changed
	copy(mem[500*ps+7:], []byte("written into a hole")) // a hole written
	copy(mem[900*ps:], []byte("second half"))           // a hole written
	clear(mem[12*ps : 13*ps])                           // a data page zeroed
	_ = mem[700*ps]                                     // a hole only read

	if _, err := findMapping(os.Getpid(), src, size-ps); !errors.Is(err, errNoDelta) {
		t.Fatalf("a mapping of another size was found: %v", err)
	}
	m, err := findMapping(os.Getpid(), src, size)
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	out, err := os.OpenFile(filepath.Join(dir, "out"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = out.Close() }()
	if err := out.Truncate(size); err != nil {
		t.Fatal(err)
	}
	st, err := copyRAM(context.Background(), m, src, &writeback{f: out}, size)
	if err != nil {
		t.Fatal(err)
	}
	if want := (copyStats{written: 3, copied: 10, zero: 1}); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	got := make([]byte, size)
	if _, err := out.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for p := 0; p < pages; p++ {
		if !bytes.Equal(got[p*ps:(p+1)*ps], mem[p*ps:(p+1)*ps]) {
			t.Fatalf("page %d differs from the mapping", p)
		}
	}
	ext, err := dataExtents(out, size)
	if err != nil {
		t.Fatal(err)
	}
	var data []int
	for _, e := range ext {
		for off := e.start; off < e.end; off += ps {
			data = append(data, int(off/ps))
		}
	}
	want := []int{10, 11, 13, 14, 15, 16, 17, 18, 19, 100, 500, 600, 900}
	if len(data) != len(want) {
		t.Fatalf("data pages %v, want %v", data, want)
	}
	for i := range want {
		if data[i] != want[i] {
			t.Fatalf("data pages %v, want %v", data, want)
		}
	}
}

// TestCopyRAMInPlace: a VM's own file gets the written pages and loses the zeroed ones; the
// pages never written stay as they were.
func TestCopyRAMInPlace(t *testing.T) {
	const ps, pages = 4096, 256
	const size = ps * pages
	f, mem := mappedFile(t, filepath.Join(t.TempDir(), "ram"), size)
	copy(mem[11*ps:], bytes.Repeat([]byte{0xbb}, 2*ps)) // pages 11 and 12 changed
	clear(mem[13*ps : 15*ps])                           // 13 and 14 zeroed
	copy(mem[200*ps:], []byte("new"))                   // a hole written
	want := append([]byte(nil), mem...)

	m, err := findMapping(os.Getpid(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	st, err := copyRAM(context.Background(), m, nil, &writeback{f: f}, size)
	if err != nil {
		t.Fatal(err)
	}
	if w := (copyStats{written: 3, zero: 2}); st != w {
		t.Errorf("stats %+v, want %+v", st, w)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the file differs from the mapping")
	}
	// The mapping itself is unchanged (its private copies hide the file's new pages).
	if !bytes.Equal(mem, want) {
		t.Fatal("the mapping changed")
	}
	ext, err := dataExtents(f, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		if e.start < 15*ps && e.end > 13*ps {
			t.Fatalf("zeroed pages still hold data: extent %+v", e)
		}
	}
}
