package vmm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/migstream"
)

// A VM restored from a memory file maps it copy-on-write (MAP_PRIVATE): a page the guest never
// wrote since is still the file's page, and a written one is an anonymous copy in QEMU. The
// kernel's page map of QEMU tells the two apart, so a save needs neither QEMU's migration of all
// RAM (which reads every page, and reading a hole of the file allocates and zeroes page cache)
// nor the stream: the new memory file is the old one's data where the guest did not write, plus
// the written pages read from QEMU's memory. QEMU saves only the device state.

// Page map entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // a page of the file (or shared anonymous memory), not a private copy
)

// ownRAMFile is a VM's own memory file in its working directory (Snapshot.OwnMem).
const ownRAMFile = "ram"

// errNoDelta says that the VM's RAM cannot be saved from its mapping (no source file, mapping
// not found, or QEMU's memory not readable): the caller falls back to the migration stream.
var errNoDelta = errors.New("RAM cannot be saved from its mapping")

// ramMapping is where QEMU maps the VM's memory file, and the handles to read it.
type ramMapping struct {
	addr    uint64   // start of the mapping in QEMU's address space
	pagemap *os.File // /proc/PID/pagemap
	mem     *os.File // /proc/PID/mem
}

func (m *ramMapping) close() {
	_ = m.pagemap.Close()
	_ = m.mem.Close()
}

// findMapping locates the mapping of src (the whole file of size bytes, from offset 0) in the
// address space of process pid (QEMU) and opens its page map and memory. Any failure is
// errNoDelta.
func findMapping(pid int, src *os.File, size int64) (*ramMapping, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoDelta, err)
	}
	proc := "/proc/" + strconv.Itoa(pid)
	maps, err := os.Open(proc + "/maps")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoDelta, err)
	}
	defer func() { _ = maps.Close() }()
	dev := fmt.Sprintf("%02x:%02x", unix.Major(st.Dev), unix.Minor(st.Dev))
	ino := strconv.FormatUint(st.Ino, 10)
	var found []uint64
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[3] != dev || f[4] != ino {
			continue
		}
		start, end, ok := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(start, 16, 64)
		b, err2 := strconv.ParseUint(end, 16, 64)
		off, err3 := strconv.ParseUint(f[2], 16, 64)
		if ok && err1 == nil && err2 == nil && err3 == nil && off == 0 && b-a == uint64(size) {
			found = append(found, a)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: reading %s/maps: %v", errNoDelta, proc, err)
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%w: %d mappings of the memory file (inode %d) of %d bytes in process %d", errNoDelta, len(found), st.Ino, size, pid)
	}
	pm, err := os.Open(proc + "/pagemap")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoDelta, err)
	}
	mem, err := os.Open(proc + "/mem")
	if err != nil {
		_ = pm.Close()
		return nil, fmt.Errorf("%w: %v", errNoDelta, err)
	}
	m := &ramMapping{addr: found[0], pagemap: pm, mem: mem}
	// Both must really be readable (ptrace access is checked on read).
	var probe [8]byte
	if _, err := pm.ReadAt(probe[:], int64(m.addr/migstream.PageSize*8)); err != nil {
		m.close()
		return nil, fmt.Errorf("%w: reading the page map: %v", errNoDelta, err)
	}
	if _, err := mem.ReadAt(probe[:], int64(m.addr)); err != nil {
		m.close()
		return nil, fmt.Errorf("%w: reading the memory: %v", errNoDelta, err)
	}
	return m, nil
}

// saveDelta is SaveSplit for a VM whose RAM maps vm.ramSrc copy-on-write (see above). It
// returns errNoDelta, having changed nothing, when that is not possible. When the file is the
// VM's own and has no other name, the written pages go into it in place and memPath becomes
// another name of it: nothing else is copied. That holds whether or not the VM runs again
// (last: a pause; else a snapshot): QEMU holds private copies of exactly those pages, so what it
// maps does not change. Once the file has another name (a snapshot's, a generation's), it is
// never written again: later saves make a new file from it.
func (vm *VM) saveDelta(ctx context.Context, statePath, memPath string, last bool) error {
	size := int64(vm.MemoryMiB) << 20
	m, err := findMapping(vm.PID, vm.ramSrc, size)
	if err != nil {
		return err
	}
	defer m.close()
	if err := vm.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("stopping the guest: %w", err)
	}
	// Stopping flushed the disks; the guest's RAM and the devices stay as they are now.
	if err := vm.saveDevices(ctx, statePath); err != nil {
		return err
	}
	if vm.ownRAM && soleName(vm.ramSrc) {
		st, err := copyRAM(ctx, m, nil, &writeback{f: vm.ramSrc}, size)
		if err != nil {
			return fmt.Errorf("saving RAM in place: %w", err)
		}
		if err := vm.ramSrc.Sync(); err != nil {
			return fmt.Errorf("syncing the memory file: %w", err)
		}
		if err := os.Link(vm.dir.File(ownRAMFile), memPath); err != nil {
			return fmt.Errorf("naming the memory file: %w", err)
		}
		vm.log.Debug("delta save in place", "written", st.written, "zero", st.zero, "last", last)
		return nil
	}
	out, err := os.OpenFile(memPath, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("creating the memory file: %w", err)
	}
	defer func() { _ = out.Close() }()
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("sizing the memory file: %w", err)
	}
	st, err := copyRAM(ctx, m, vm.ramSrc, &writeback{f: out}, size)
	if err != nil {
		return fmt.Errorf("saving RAM: %w", err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("syncing the memory file: %w", err)
	}
	vm.log.Debug("delta save", "written", st.written, "copied", st.copied, "zero", st.zero)
	return nil
}

// saveDevices has QEMU write its device state (no RAM) and makes of it, at statePath (synced),
// a stream that a VM started with -incoming loads.
func (vm *VM) saveDevices(ctx context.Context, statePath string) error {
	raw := statePath + ".devices"
	defer func() { _ = os.Remove(raw) }()
	// live=false: QEMU keeps its disks active (the sandbox may go on).
	if err := vm.qmp.Execute(ctx, "xen-save-devices-state", map[string]any{"filename": raw, "live": false}, nil); err != nil {
		return fmt.Errorf("saving the device state: %w", err)
	}
	in, err := os.Open(raw)
	if err != nil {
		return fmt.Errorf("reading the device state: %w", err)
	}
	defer func() { _ = in.Close() }()
	out, err := createState(statePath)
	if err != nil {
		return err
	}
	defer func() { _ = out.Close() }()
	if err := migstream.DeviceStream(out, in, machineType); err != nil {
		return fmt.Errorf("the device state: %w", err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("syncing the snapshot state: %w", err)
	}
	return nil
}

type copyStats struct{ written, copied, zero int64 } // pages

// copyRAM writes the RAM of mapping m to out: the pages QEMU holds a private copy of from its
// memory (zero ones as holes), every other page from src where src has data. With src nil, out
// is the mapped file itself: only the private copies are written, and zero ones punched out.
// The RAM is split between copyWorkers goroutines: each private page costs two memory copies
// (QEMU's memory into this process, then into the page cache), and the guest is stopped, so the
// host's cores are free for them. BenchmarkCopyRAMInPlace on 2 cores: ~2.2 GB/s with one
// goroutine, ~2.9 GB/s with two (their writes share the file's inode lock). A reader/writer
// pipeline measured slower than either. ctx is checked at every chunk (a pause has a deadline).
func copyRAM(ctx context.Context, m *ramMapping, src *os.File, out *writeback, size int64) (copyStats, error) {
	var list []extent
	if src != nil {
		ext, err := dataExtents(src, size)
		if err != nil {
			return copyStats{}, err
		}
		list = ext
	}
	pages := size / migstream.PageSize
	workers := int64(min(copyWorkers, runtime.NumCPU()))
	per := (pages/workers + copyChunk - 1) / copyChunk * copyChunk // whole chunks per worker
	stats := make([]copyStats, workers)
	var g errgroup.Group
	for w := range workers {
		lo, hi := w*per, min((w+1)*per, pages)
		if lo >= hi {
			continue
		}
		g.Go(func() error {
			var err error
			stats[w], err = copyRange(ctx, m, src, &extents{list: list}, out, lo, hi)
			return err
		})
	}
	err := g.Wait()
	var st copyStats
	for _, s := range stats {
		st.written, st.copied, st.zero = st.written+s.written, st.copied+s.copied, st.zero+s.zero
	}
	return st, err
}

const (
	copyWorkers = 2
	copyChunk   = 256 // pages per page-map read and per memory read (1 MiB)
)

// copyRange is copyRAM for the pages [lo, hi); data walks src's extents from lo on.
func copyRange(ctx context.Context, m *ramMapping, src *os.File, data *extents, out *writeback, lo, hi int64) (copyStats, error) {
	var st copyStats
	entries := make([]byte, copyChunk*8)
	buf := make([]byte, copyChunk*migstream.PageSize)
	for first := lo; first < hi; first += copyChunk {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("copying RAM: %w", context.Cause(ctx))
		}
		n := min(copyChunk, hi-first)
		if _, err := m.pagemap.ReadAt(entries[:n*8], int64(m.addr/migstream.PageSize+uint64(first))*8); err != nil {
			return st, fmt.Errorf("reading QEMU's page map: %w", err)
		}
		// Runs of pages of one kind: QEMU's private copies, or the file's.
		err := forRuns(int(n), func(i int) bool { return isPrivate(entries[i*8:]) }, func(i, j int, private bool) error {
			off, end := (first+int64(i))*migstream.PageSize, (first+int64(j))*migstream.PageSize
			if private {
				w, z, err := copyPrivate(m, out, buf[:end-off], off, src == nil)
				st.written, st.zero = st.written+w, st.zero+z
				return err
			}
			if src != nil {
				c, err := data.copy(src, out, off, end)
				st.copied += c
				return err
			}
			return nil
		})
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

// isPrivate says whether page map entry e (the kernel's byte order) is a private copy.
func isPrivate(e []byte) bool {
	v := binary.NativeEndian.Uint64(e)
	return v&(pmPresent|pmSwapped) != 0 && v&pmFile == 0
}

// forRuns calls f for each maximal run [a, b) of the indexes below n that kind puts alike.
func forRuns(n int, kind func(i int) bool, f func(a, b int, k bool) error) error {
	for a := 0; a < n; {
		k, b := kind(a), a+1
		for b < n && kind(b) == k {
			b++
		}
		if err := f(a, b, k); err != nil {
			return err
		}
		a = b
	}
	return nil
}

var zeroPage [migstream.PageSize]byte

// copyPrivate reads len(buf) bytes of RAM at off from QEMU and writes its non-zero pages; zero
// ones are left out, or punched out of the file when punch.
func copyPrivate(m *ramMapping, out *writeback, buf []byte, off int64, punch bool) (written, zero int64, err error) {
	if _, err := m.mem.ReadAt(buf, int64(m.addr)+off); err != nil {
		return 0, 0, fmt.Errorf("reading QEMU's memory at RAM offset %#x: %w", off, err)
	}
	// Consecutive pages of one kind go out in one call.
	const ps = migstream.PageSize
	isZero := func(i int) bool { return bytes.Equal(buf[i*ps:(i+1)*ps], zeroPage[:]) }
	err = forRuns(len(buf)/ps, isZero, func(a, b int, zeros bool) error {
		at := off + int64(a*ps)
		if !zeros {
			written += int64(b - a)
			_, err := out.WriteAt(buf[a*ps:b*ps], at)
			return err
		}
		zero += int64(b - a)
		if !punch {
			return nil
		}
		if err := unix.Fallocate(int(out.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, at, int64((b-a)*ps)); err != nil {
			return fmt.Errorf("punching zero pages out at %#x: %w", at, err)
		}
		return nil
	})
	return written, zero, err
}

// extent is a range of a file that holds data.
type extent struct{ start, end int64 }

// dataExtents lists where the sparse file f (of size bytes) has data.
func dataExtents(f *os.File, size int64) ([]extent, error) {
	var ext []extent
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return nil, fmt.Errorf("finding data in the memory file: %w", err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("finding holes in the memory file: %w", err)
		}
		ext = append(ext, extent{d, min(h, size)})
		off = h
	}
	return ext, nil
}

// extents walks a file's data extents in order.
type extents struct {
	list []extent
	next int // first extent that may still overlap a later range
}

// copy copies the data of src within [off, end) to out at the same offsets, in the kernel.
// Successive calls must ask for increasing ranges.
func (x *extents) copy(src *os.File, out *writeback, off, end int64) (int64, error) {
	var pages int64
	for x.next < len(x.list) && x.list[x.next].end <= off {
		x.next++
	}
	for _, e := range x.list[x.next:] {
		if e.start >= end {
			break
		}
		a, b := max(e.start, off), min(e.end, end)
		for roff, woff := a, a; roff < b; {
			n, err := unix.CopyFileRange(int(src.Fd()), &roff, int(out.f.Fd()), &woff, int(b-roff), 0)
			if err != nil {
				return pages, fmt.Errorf("copying the memory file at %#x: %w", roff, err)
			}
			if n == 0 {
				return pages, fmt.Errorf("copying the memory file at %#x: %w", roff, io.ErrUnexpectedEOF)
			}
		}
		out.started(a, b-a)
		pages += (b - a) / migstream.PageSize
	}
	return pages, nil
}

// soleName says whether open file f has one name only (no generation or snapshot shares it).
func soleName(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Nlink == 1
}
