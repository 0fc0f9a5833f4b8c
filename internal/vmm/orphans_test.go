package vmm

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A QEMU belongs to a run directory only if an argument names its own VM directory there as a
// whole path: /srv/home/a/run/ is another directory than /home/a/run/.
func TestNamesDir(t *testing.T) {
	const dir = "/home/a/run/abc123/"
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"qemu", "-qmp", "unix:/home/a/run/abc123/qmp.sock,server=on"}, true},
		{[]string{"qemu", "-chardev", "socket,id=c,path=/home/a/run/abc123/ch.sock"}, true},
		{[]string{"qemu", "-drive", "file=/home/a/run/abc123/disk.qcow2,if=none"}, true},
		{[]string{"/home/a/run/abc123/x"}, true},
		{[]string{"qemu", "-qmp", "unix:/srv/home/a/run/abc123/qmp.sock"}, false},
		{[]string{"qemu", "-drive", "file=/x/home/a/run/abc123/disk.qcow2,file=/srv/home/a/run/abc123/y"}, false},
		{[]string{"qemu", "-drive", "file=/srv/home/a/run/abc123/d,path=/home/a/run/abc123/e"}, true},
		{[]string{"qemu", "-qmp", "unix:/home/a/run/abc1234/qmp.sock"}, false},
	} {
		if got := namesDir(c.args, dir); got != c.want {
			t.Errorf("%q: %v, want %v", c.args, got, c.want)
		}
	}
}

// ReapOrphans kills a process naming a VM directory of the run directory as QEMU does (-name
// cell-<id>, a path inside <id>/) unless the caller says the id is live or another process claims
// the directory, and removes the VM directories no live VM owns, leaving the rest.
func TestReapOrphans(t *testing.T) {
	run := t.TempDir()
	for _, d := range []string{"orphan", "live", "claimed", ".gone-x-12345678", "Not_an_id"} {
		if err := os.Mkdir(filepath.Join(run, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	claim, err := claimDir(filepath.Join(run, "claimed"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = claim.Close() }()
	// sh's builtin read blocks on a pipe this test holds open: one process, no children; its
	// arguments (after $0) are the ones QEMU would have.
	fakeQEMU := func(id string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", "read x", "qemu", "-name", "cell-"+id, "-qmp", "unix:"+filepath.Join(run, id, "qmp.sock"))
		if _, err := cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	orphan, live, claimed := fakeQEMU("orphan"), fakeQEMU("live"), fakeQEMU("claimed")
	// exec.Command starts the process; wait until its command line is readable.
	deadline := time.Now().Add(5 * time.Second)
	for len(findQEMUs(run)) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(findQEMUs(run)); n != 3 {
		t.Fatalf("found %d of the 3 fake QEMUs", n)
	}

	ReapOrphans(run, func(id string) bool { return id == "live" }, slog.New(slog.DiscardHandler))

	if err := orphan.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("the orphan QEMU: %v, want killed", err)
	}
	for name, cmd := range map[string]*exec.Cmd{"live": live, "claimed": claimed} {
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Errorf("the %s QEMU was killed: %v", name, err)
		}
	}
	for d, want := range map[string]bool{"orphan": false, ".gone-x-12345678": false, "live": true, "claimed": true, "Not_an_id": true} {
		if _, err := os.Stat(filepath.Join(run, d)); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", d, err == nil, want)
		}
	}
}
