package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A VM's disk is a qcow2 overlay whose virtual size bounds what the guest can make it allocate
// on the host: every cluster it writes is stored once, clusters it discards are freed (and
// their space punched out of the file), so the file holds at most the virtual size plus
// qcow2's own tables (~0.02% of it). The guest's file system fills exactly that size.

// ErrInsufficientStorage is wrapped when the host's disk has too little free space for a VM's
// disk to grow to its size.
var ErrInsufficientStorage = errors.New("insufficient storage")

// MiB is a mebibyte, the unit disk sizes are given in.
const MiB = 1 << 20

// DefaultMinFreeDisk is the default reserve of free space (see ParseReserve).
const DefaultMinFreeDisk = "2GiB,5%"

// Reserve is free space kept on the host's disk: the larger of Bytes and Percent of the file
// system's size.
type Reserve struct {
	Bytes   uint64
	Percent float64
}

// Of is the reserve on a file system of total bytes.
func (r Reserve) Of(total uint64) uint64 {
	share := uint64(math.MaxUint64)
	if p := float64(total) * r.Percent / 100; p < math.MaxUint64 { // float64(MaxUint64) is 2^64
		share = uint64(p)
	}
	return max(r.Bytes, min(share, total)) // a float64 rounds large totals up
}

func (r Reserve) String() string {
	var parts []string
	if r.Bytes > 0 || r.Percent == 0 {
		parts = append(parts, exactSize(r.Bytes))
	}
	if r.Percent > 0 {
		parts = append(parts, strconv.FormatFloat(r.Percent, 'f', -1, 64)+"%")
	}
	return strings.Join(parts, ",")
}

// ParseReserve parses a reserve: a size ("2GiB", see ParseSize), a share of the file system
// ("5%"), or both separated by a comma ("2GiB,5%": the larger of the two).
func ParseReserve(s string) (Reserve, error) {
	var r Reserve
	var seenSize, seenPct bool
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if pct, ok := strings.CutSuffix(part, "%"); ok {
			p, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
			if err != nil || seenPct || math.IsNaN(p) || p < 0 || p > 100 {
				return Reserve{}, fmt.Errorf("min free disk %q: %q is not one percentage from 0 to 100", s, part)
			}
			r.Percent, seenPct = p, true
			continue
		}
		n, err := ParseSize(part)
		if n > 0 && strings.TrimLeft(part, "0123456789") == "" {
			err = errors.New("a size needs a unit") // "5" is more likely 5% or 5 GiB than 5 bytes
		}
		if err != nil || seenSize {
			return Reserve{}, fmt.Errorf("min free disk %q: want a size (2GiB), a percentage (5%%) or both (2GiB,5%%)", s)
		}
		r.Bytes, seenSize = n, true
	}
	return r, nil
}

// sizeUnits are the suffixes ParseSize knows, all binary (K and KB are KiB).
var sizeUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseSize parses a whole number of bytes with an optional binary unit: "512", "64K", "100MiB",
// "2GiB", "1T" (case does not matter; K, KB and KiB all mean 1024).
func ParseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a whole number with an optional unit (K, M, G, T)", s)
	}
	n, err := strconv.ParseUint(s[:i], 10, 64)
	unit, ok := sizeUnits[strings.ToLower(strings.TrimSpace(s[i:]))]
	if err != nil || !ok {
		return 0, fmt.Errorf("size %q: want a whole number with an optional unit (K, M, G, T)", s)
	}
	if n > math.MaxUint64/unit {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * unit, nil
}

// exactSize writes bytes in the largest binary unit that divides them: ParseSize reads it back.
func exactSize(n uint64) string {
	for _, u := range []string{"TiB", "GiB", "MiB", "KiB"} {
		size := sizeUnits[strings.ToLower(u)]
		if n >= size && n%size == 0 {
			return strconv.FormatUint(n/size, 10) + u
		}
	}
	return strconv.FormatUint(n, 10) + "B"
}

// FormatSize writes bytes in the largest binary unit that keeps one decimal: "2GiB", "1.5GiB".
func FormatSize(n uint64) string {
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size {
			return strconv.FormatFloat(math.Round(float64(n)/float64(u.size)*10)/10, 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatUint(n, 10) + "B"
}

// DiskGuard admits VM disks against the free space of the file system holding Dir: a VM whose
// disk could grow past what is free, beyond the reserve, is refused before it starts, instead
// of filling the host's disk (where every VM's writes then fail) while it runs. It is a check,
// not a reservation: VMs already running may still grow into the space it saw free, which the
// reserve is for.
type DiskGuard struct {
	Dir     string
	Reserve Reserve
	// Space reads the available (to an unprivileged user) and total bytes of dir's file system;
	// nil: statfs(2).
	Space func(dir string) (avail, total uint64, err error)
}

// Admit returns nil when size more bytes (what: "a sandbox disk", for the error) fit on the
// host. A nil guard admits everything.
func (g *DiskGuard) Admit(size uint64, what string) error {
	if g == nil {
		return nil
	}
	space := g.Space
	if space == nil {
		space = statfsSpace
	}
	avail, total, err := space(g.Dir)
	if err != nil {
		return fmt.Errorf("reading the free space of %s: %w", g.Dir, err)
	}
	return admit(avail, total, size, g.Reserve, what)
}

// admit is DiskGuard's arithmetic.
func admit(avail, total, size uint64, r Reserve, what string) error {
	reserve := r.Of(total)
	if avail >= reserve && avail-reserve >= size {
		return nil
	}
	return fmt.Errorf("%w: %s of %s does not fit on the host's disk, which has %s free and keeps %s of it free (min free disk %s)",
		ErrInsufficientStorage, what, FormatSize(size), FormatSize(avail), FormatSize(reserve), r)
}

// statfsSpace reads the space of the file system that holds dir, or will once it is made (the
// run directory appears with the first VM): its nearest existing ancestor's.
func statfsSpace(dir string) (avail, total uint64, err error) {
	var st unix.Statfs_t
	for {
		err := unix.Statfs(dir, &st)
		if err == nil {
			return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
		}
		parent := filepath.Dir(dir)
		if !errors.Is(err, unix.ENOENT) || parent == dir {
			return 0, 0, err
		}
		dir = parent
	}
}

// DiskVirtualSize reads a qcow2 file's virtual size (the disk the guest sees) from its header.
func DiskVirtualSize(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	var h [32]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return 0, fmt.Errorf("%s: reading the qcow2 header: %w", path, err)
	}
	if string(h[:4]) != "QFI\xfb" {
		return 0, fmt.Errorf("%s: not a qcow2 file", path)
	}
	return binary.BigEndian.Uint64(h[24:32]), nil
}

// GrowDisk grows the running VM's disk to size bytes (a whole number of MiB) when it is smaller
// and the host's disk can take the growth (ErrInsufficientStorage when not). The guest learns the
// new size from virtio's configuration-change interrupt; its file system is the caller's.
func (vm *VM) GrowDisk(ctx context.Context, size uint64) error {
	if size%MiB != 0 {
		return fmt.Errorf("disk size: %d bytes is not a whole number of MiB", size)
	}
	have, err := DiskVirtualSize(vm.File(DiskFile))
	if err != nil {
		return err
	}
	if size <= have {
		return nil
	}
	if err := vm.host.cfg.Disk.Admit(size-have, "a larger disk"); err != nil {
		return err
	}
	node, err := vm.activeNode(ctx)
	if err != nil {
		return err
	}
	if err := vm.qmp.Execute(ctx, "block_resize", map[string]any{"node-name": node, "size": size}, nil); err != nil {
		return fmt.Errorf("growing the disk to %s: %w", FormatSize(size), err)
	}
	return nil
}
