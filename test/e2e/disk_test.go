package e2e

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/pkg/client"
)

// rootRun runs a shell script as root in sb and returns its output and exit code.
func rootRun(t *testing.T, sb *sandbox.Sandbox, script string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/sh", Args: []string{"-c", script}, User: "root"}, nil, &out, &errb, nil)
	if err != nil {
		t.Fatalf("%q: %v", script, err)
	}
	return out.String(), errb.String(), res.ExitCode
}

// writeScript writes non-zero bytes (zeroes the disk would store as zero clusters, which take no
// space) to the file $1 until it holds $2 bytes or the disk is full, syncs, and prints the errno
// it stopped on ("-" if none) and how much it wrote. Python writes ~3 times as fast as a shell
// pipe in a TCG guest.
const writeScript = `python3 - "$@" <<'EOF'
import errno, os, sys
path, limit = sys.argv[1], int(sys.argv[2])
b = b"cell-disk-test" * (1 << 16)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
n, stop = 0, "-"
try:
    while n < limit:
        n += os.write(fd, b[:limit - n])
    os.fsync(fd)
except OSError as e:
    stop = errno.errorcode.get(e.errno, str(e.errno))
print(stop, n)
EOF`

// writeFile runs writeScript as root in sb: the errno it stopped on and the bytes written.
func writeFile(t *testing.T, sb *sandbox.Sandbox, path string, limit int64) (string, int64) {
	t.Helper()
	out, errs, code := rootRun(t, sb, "set -- "+path+" "+strconv.FormatInt(limit, 10)+"\n"+writeScript)
	f := strings.Fields(out)
	if code != 0 || len(f) != 2 {
		t.Fatalf("writing %s: exit %d, %q %q", path, code, out, errs)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f[0], n
}

// overlayBytes is what the sandbox's disk overlay takes on the host's disk.
func overlayBytes(t *testing.T, sb *sandbox.Sandbox) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(sb.VM.File("disk.qcow2"), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// guestDiskSize is the size of the guest's root file system (df), in bytes.
func guestDiskSize(t *testing.T, sb *sandbox.Sandbox) int64 {
	t.Helper()
	out, errs, code := rootRun(t, sb, "df -B1 --output=size / | tail -n 1")
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if code != 0 || err != nil {
		t.Fatalf("df: %q %q %d %v", out, errs, code, err)
	}
	return n
}

// TestDiskDiscardReturnsSpace: what a sandbox deletes is given back on the host. The guest
// (restored from the base template, whose cold boot mounted the root) mounts its root with
// online discard, and its overlay frees the clusters: 300 MB written, synced and deleted leave
// the overlay about as small as before.
func TestDiskDiscardReturnsSpace(t *testing.T) {
	rt, _, _ := templateRuntime(t)
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if !sb.Restored {
		t.Fatal("the sandbox was booted, not restored from the template")
	}
	// The mount options are the template's cold boot's, restored with its memory.
	out, _, _ := rootRun(t, sb, "grep ' / ' /proc/mounts; cat /sys/block/vda/queue/discard_granularity")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[0], "discard") || lines[1] != "65536" {
		t.Errorf("root mount and discard granularity: %q", out)
	}
	const size = 300 << 20
	if stop, n := writeFile(t, sb, "/var/tmp/big", size); stop != "-" || n != size {
		t.Fatalf("writing %d bytes stopped at %d: %s", size, n, stop)
	}
	written := overlayBytes(t, sb)
	if out, errs, code := rootRun(t, sb, "rm /var/tmp/big && sync"); code != 0 {
		t.Fatalf("deleting: %s %s", out, errs)
	}
	// ext4 discards the blocks when the deletion's transaction commits (sync commits it), and
	// QEMU frees the clusters as it completes each discard: the space is back at once. A
	// little time is allowed all the same.
	var freed int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		freed = written - overlayBytes(t, sb)
		if freed >= size*8/10 || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("overlay %d MiB with the file, %d MiB freed by deleting it", written>>20, freed>>20)
	if freed < size*8/10 {
		t.Fatalf("deleting %d MiB freed %d MiB of the overlay (%d MiB), want most of it", size>>20, freed>>20, written>>20)
	}
}

// TestDiskSizeBoundsTheGuest: a sandbox's disk size is the size of its root file system (grown
// online from the template's 2 GiB, in a restored sandbox and a booted one), and the most it can
// take on the host: a guest writing past it gets ENOSPC, and its overlay stays within the size
// plus qcow2's tables.
func TestDiskSizeBoundsTheGuest(t *testing.T) {
	rt, _, _ := templateRuntime(t)
	ctx := context.Background()
	const diskMiB = 2560
	t0 := time.Now()
	sb, err := rt.Boot(ctx, sandbox.Options{DiskMiB: diskMiB})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	t.Logf("restored with a %d MiB disk in %v", diskMiB, time.Since(t0))
	if !sb.Restored {
		t.Fatal("the sandbox was booted, not restored from the template")
	}
	// The file system has its overhead (journal, inode tables): most of the disk, more than the
	// template's whole disk.
	if got := guestDiskSize(t, sb); got > diskMiB<<20 || got < (diskMiB<<20)*9/10 {
		t.Fatalf("the guest's file system has %d MiB, want most of %d", got>>20, diskMiB)
	}
	// Root (which ext4's reserved blocks do not stop) writes until the disk is full.
	stop, filled := writeFile(t, sb, "/var/tmp/fill", 4<<30)
	if stop != "ENOSPC" {
		t.Fatalf("writing 4 GiB into a %d MiB disk stopped with %s after %d MiB; want ENOSPC", diskMiB, stop, filled>>20)
	}
	if out, errs, code := rootRun(t, sb, "sync"); code != 0 {
		t.Fatalf("sync: %s %s", out, errs)
	}
	host := overlayBytes(t, sb)
	t.Logf("the guest wrote %d MiB before ENOSPC; the overlay takes %d MiB on the host", filled>>20, host>>20)
	if host > diskMiB<<20+16<<20 {
		t.Fatalf("the overlay of a %d MiB disk takes %d MiB on the host", diskMiB, host>>20)
	}
	if filled < 1800<<20 || host < filled {
		t.Fatalf("the guest wrote only %d MiB (overlay %d MiB)", filled>>20, host>>20)
	}

	// A booted sandbox's file system grows too (its kernel sees the disk's size from the start).
	cold, err := rt.Boot(ctx, sandbox.Options{Cold: true, DiskMiB: 3072})
	if err != nil {
		t.Fatal(err)
	}
	defer cold.Close()
	if got := guestDiskSize(t, cold); got > 3072<<20 || got < (3072<<20)*9/10 {
		t.Fatalf("the booted guest's file system has %d MiB, want most of 3072", got>>20)
	}
	// A disk below the template's is refused: its file system cannot shrink.
	if _, err := rt.Boot(ctx, sandbox.Options{DiskMiB: 1024}); err == nil || !strings.Contains(err.Error(), "disk size") {
		t.Fatalf("a 1 GiB disk: %v", err)
	}
}

// TestServeDiskSizeAndAdmission: `cell serve --disk-size` gives every sandbox its disk (in its
// details, and its guest's file system), which survives a pause; with `--min-free-disk 100%` the
// daemon refuses creates and resumes with 507 and serves everything else; the paused sandbox
// resumes intact once there is room.
func TestServeDiskSizeAndAdmission(t *testing.T) {
	d := newDaemon(t)
	s1, c := d.serve(t, "--disk-size", "2560")
	ctx := context.Background()
	info, err := c.Create(ctx, client.CreateOptions{Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatalf("create: %v\n%s", err, s1.logs)
	}
	id := info.SandboxID
	if got, err := c.Get(ctx, id); err != nil || got.DiskSizeMB != 2560 {
		t.Fatalf("details: disk %d MB, %v", got.DiskSizeMB, err)
	}
	size := func() int64 {
		n, err := strconv.ParseInt(strings.TrimSpace(execOut(t, c, id, "df -B1 --output=size / | tail -n 1")), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := size(); got > 2560<<20 || got < (2560<<20)*9/10 {
		t.Fatalf("the guest's file system has %d MiB, want most of 2560", got>>20)
	}
	var ce *client.Error
	if _, err := c.Create(ctx, client.CreateOptions{DiskSizeMB: 1024}); !errors.As(err, &ce) || ce.Status != 400 || !strings.Contains(ce.Message, "diskSizeMB") {
		t.Fatalf("a 1024 MB disk: %v", err)
	}
	if err := c.Pause(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	stop := func(s *server) {
		t.Helper()
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := s.cmd.Wait(); err != nil {
			t.Fatalf("cell serve after SIGTERM: %v\n%s", err, s.logs)
		}
	}
	stop(s1)

	// No room: every sandbox disk would eat into the reserve, which is the whole disk.
	s2, c := d.serve(t, "--min-free-disk", "100%")
	if _, err := c.Create(ctx, client.CreateOptions{}); !errors.As(err, &ce) || ce.Status != 507 || !strings.Contains(ce.Message, "min free disk 100%") {
		t.Fatalf("create with no room: %v\n%s", err, s2.logs)
	}
	if err := c.Resume(ctx, id, time.Minute); !errors.As(err, &ce) || ce.Status != 507 {
		t.Fatalf("resume with no room: %v\n%s", err, s2.logs)
	}
	if got, err := c.Get(ctx, id); err != nil || got.State != "paused" || got.DiskSizeMB != 2560 {
		t.Fatalf("the refused sandbox: %+v %v", got, err)
	}
	stop(s2)

	_, c = d.serve(t)
	if err := c.Resume(ctx, id, time.Minute); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := size(); got > 2560<<20 || got < (2560<<20)*9/10 {
		t.Fatalf("after the pause the guest's file system has %d MiB, want most of 2560", got>>20)
	}
}
