package sandbox

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cellhq/cell/internal/vmm"
)

// growScript grows the root file system to its disk, online (resize2fs calls ext4's resize
// ioctl; the guest needs no reboot and nothing of envd). A guest restored from a snapshot learns
// the disk's new size from virtio's configuration-change interrupt, which a kernel worker
// handles: the script waits (3 s at most) until the kernel knows the size, in 512-byte sectors.
const growScript = `i=0
while read -r n </sys/block/vda/size && [ "$n" -lt %[1]d ]; do
	i=$((i+1))
	if [ $i -gt 300 ]; then echo "the disk has $n sectors, not %[1]d" >&2; exit 1; fi
	sleep 0.01
done
exec /sbin/resize2fs /dev/vda`

// growFS grows the guest's root file system to fill its disk of size bytes.
func (s *Sandbox) growFS(ctx context.Context, size uint64) error {
	var out capped
	res, err := s.Run(ctx, RunSpec{Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf(growScript, size/512)}, User: "root"}, nil, &out, &out, nil)
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("exit code %d: %s", res.ExitCode, strings.TrimSpace(out.String()))
	}
	if err != nil {
		return fmt.Errorf("growing the sandbox's file system to its %d MiB disk: %w", size>>20, err)
	}
	return nil
}

// capped keeps the first 4 KiB written to it (a guest's output is not to be held whole).
type capped struct{ b []byte }

func (c *capped) Write(p []byte) (int, error) {
	if room := 4096 - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) String() string { return string(c.b) }

// EnsureFree grows the sandbox's disk and root file system, if need be, so that at least mib
// MiB are free in it for its users (root's reserved blocks not counted), and returns the free
// MiB before and after. The guest reports its free space; it is not trusted beyond that: a
// guest that lies gets at most the mib MiB asked for added to its disk.
func (s *Sandbox) EnsureFree(ctx context.Context, mib int) (before, after int, err error) {
	if before, err = s.freeMiB(ctx); err != nil {
		return 0, 0, err
	}
	if before >= mib {
		return before, before, nil
	}
	// Without resize2fs the file system cannot follow: the disk is not grown either (a template's
	// disk is every sandbox's floor, charged against the host's free space).
	var out capped
	res, err := s.Run(ctx, RunSpec{Cmd: "/bin/sh", Args: []string{"-c", "test -x /sbin/resize2fs"}, User: "root"}, nil, &out, &out, nil)
	if err != nil {
		return before, before, err
	}
	if res.ExitCode != 0 {
		return before, before, fmt.Errorf("the guest has no /sbin/resize2fs")
	}
	have, err := vmm.DiskVirtualSize(s.VM.File(vmm.DiskFile))
	if err != nil {
		return before, before, err
	}
	// ext4 keeps 5% of the new space for root and some for its own metadata.
	need := uint64(mib-before) * vmm.MiB
	size := have + need*100/94 + 16*vmm.MiB
	size = (size + vmm.MiB - 1) / vmm.MiB * vmm.MiB
	if size > MaxDiskMiB*vmm.MiB {
		return before, before, fmt.Errorf("%d MiB free would need a disk over %d MiB", mib, MaxDiskMiB)
	}
	if err := s.VM.GrowDisk(ctx, size); err != nil {
		return before, before, err
	}
	if err := s.growFS(ctx, size); err != nil {
		return before, before, err
	}
	after, err = s.freeMiB(ctx)
	return before, after, err
}

// freeMiB is the guest's free space on its root file system for users, as it reports it.
func (s *Sandbox) freeMiB(ctx context.Context) (int, error) {
	var out capped
	res, err := s.Run(ctx, RunSpec{Cmd: "/bin/sh", Args: []string{"-c", "exec stat -f -c '%a %S' /"}, User: "root"}, nil, &out, io.Discard, nil)
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("exit code %d", res.ExitCode)
	}
	if err != nil {
		return 0, fmt.Errorf("reading the guest's free disk: %w", err)
	}
	return parseFree(out.String())
}

// parseFree reads stat's "available-blocks block-size" in MiB.
func parseFree(s string) (int, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, fmt.Errorf("the guest's free disk: %q", s)
	}
	blocks, err1 := strconv.ParseUint(f[0], 10, 64)
	bsize, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || bsize < 512 || bsize > 1<<20 || bsize&(bsize-1) != 0 {
		return 0, fmt.Errorf("the guest's free disk: %q", s)
	}
	mib := blocks / (vmm.MiB / bsize)
	if mib > MaxDiskMiB {
		mib = MaxDiskMiB
	}
	return int(mib), nil
}
