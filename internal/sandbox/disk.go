package sandbox

import (
	"context"
	"fmt"
	"strings"
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
