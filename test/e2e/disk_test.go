package e2e

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/sandbox"
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
	if err := syscall.Stat(sb.VM.Dir.File("disk.qcow2"), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
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
