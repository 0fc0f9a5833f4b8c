package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// qemuIO writes 64 KiB of pattern at offset off of the qcow2 chain topped by disk (qemu-io, as
// a guest would through QEMU), or reads them back and says whether they match.
func qemuIO(t *testing.T, disk, op string, off int, pattern byte) bool {
	t.Helper()
	cmd := fmt.Sprintf("%s -P %d %d 64k", op, pattern, off)
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, disk).CombinedOutput()
	if op == "write" && err != nil {
		t.Fatalf("qemu-io %s: %v %s", cmd, err, out)
	}
	return err == nil && !strings.Contains(string(out), "Pattern verification failed")
}

// needQEMUImg returns qemu-img's path, or fails the test saying how to get it.
func needQEMUImg(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal("qemu-img is required (apt-get install qemu-utils)")
	}
	return p
}

// qemuImgCreate makes a qcow2 file: qemu-img create -f qcow2 args.
func qemuImgCreate(t *testing.T, qemuImg string, args ...string) {
	t.Helper()
	if out, err := exec.Command(qemuImg, append([]string{"create", "-q", "-f", "qcow2"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create %v: %v %s", args, err, out)
	}
}

func chainHost(t *testing.T) *Host {
	t.Helper()
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Fatal("qemu-io is required (apt-get install qemu-utils)")
	}
	return &Host{cfg: Config{QEMUImg: needQEMUImg(t)}}
}

// TestDiskTakenByReference walks a disk through what a sandbox does to it: created on a
// template's disk, resumed twice from a paused generation (taken by reference, not copied), and
// checks that each generation keeps its own content, that the chain resolves from every
// directory that holds it, and that removing a generation leaves the others whole.
func TestDiskTakenByReference(t *testing.T) {
	h := chainHost(t)
	ctx := context.Background()
	root := t.TempDir()
	base := filepath.Join(root, "base.qcow2")
	qemuImgCreate(t, h.cfg.QEMUImg, base, "16M")
	mkdir := func(name string) string {
		d := filepath.Join(root, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	// A new VM: one layer on the template's disk, named by its absolute path.
	vm1 := mkdir("vm1")
	top, err := h.newTop(ctx, vm1, base, base)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(vm1, DiskFile)
	if a, b := stat(t, disk), stat(t, filepath.Join(vm1, top)); !os.SameFile(a, b) {
		t.Fatal("DiskFile is not the top layer")
	}
	qemuIO(t, disk, "write", 0, 1)
	// Paused: the disk moves into a generation with its layers.
	g1 := mkdir("g1")
	if err := LinkLayers(disk, g1); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(disk, filepath.Join(g1, DiskFile)); err != nil {
		t.Fatal(err)
	}
	// Resumed twice, paused in between: each resume adds a layer, by reference.
	g, want := g1, byte(1) // the newest generation, and what it holds at 0
	for i := 2; i <= 3; i++ {
		vm := mkdir("vm" + strconv.Itoa(i))
		if _, err := h.takeChain(ctx, filepath.Join(g, DiskFile), vm); err != nil {
			t.Fatal(err)
		}
		d := filepath.Join(vm, DiskFile)
		local, bottom, err := localLayers(d)
		if err != nil || len(local) != i-1 || bottom != base {
			t.Fatalf("resume %d: local layers %v on %q, %v", i, local, bottom, err)
		}
		if !os.SameFile(stat(t, filepath.Join(vm, local[0])), stat(t, filepath.Join(g, DiskFile))) {
			t.Fatalf("resume %d: the generation's disk was copied, not taken by reference", i)
		}
		if !qemuIO(t, d, "read", 0, want) {
			t.Fatalf("resume %d: the disk lost what was written before", i)
		}
		qemuIO(t, d, "write", 65536*i, byte(i))
		qemuIO(t, d, "write", 0, byte(10+i))
		next := mkdir("g" + strconv.Itoa(i))
		if err := LinkLayers(d, next); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(d, filepath.Join(next, DiskFile)); err != nil {
			t.Fatal(err)
		}
		if !qemuIO(t, filepath.Join(g, DiskFile), "read", 0, want) {
			t.Fatalf("generation %s changed when the VM resumed from it wrote", g)
		}
		g, want = next, byte(10+i)
	}
	if !qemuIO(t, filepath.Join(g1, DiskFile), "read", 0, 1) {
		t.Fatal("the first generation changed")
	}
	chain, err := Chain(filepath.Join(g, DiskFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 4 || chain[len(chain)-1] != base {
		t.Fatalf("chain %v: want the top, two layers and the base", chain)
	}
	// The older generations and VM directories go; the newest keeps its whole disk.
	for _, d := range []string{"g1", "g2", "vm1", "vm2", "vm3"} {
		if err := os.RemoveAll(filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	last := filepath.Join(g, DiskFile)
	if _, err := Chain(last); err != nil {
		t.Fatalf("after removing the older generations: %v", err)
	}
	if !qemuIO(t, last, "read", 0, 13) || !qemuIO(t, last, "read", 2*65536, 2) || !qemuIO(t, last, "read", 3*65536, 3) {
		t.Fatal("the newest generation lost data")
	}
	if out, err := exec.Command(h.cfg.QEMUImg, "check", last).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v %s", err, out)
	}
	// A missing layer makes the chain incomplete (a generation that would not boot).
	names, _, err := localLayers(last)
	if err != nil || len(names) != 2 {
		t.Fatalf("local layers %v, %v", names, err)
	}
	if err := os.Remove(filepath.Join(g, names[1])); err != nil {
		t.Fatal(err)
	}
	if _, err := Chain(last); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a chain with a missing layer: %v", err)
	}
}

// TestChainRefusesLoopsAndOddNames: headers are read, not trusted: a chain that loops ends in an
// error, and a local backing name that is not a layer's is refused.
func TestChainRefusesLoopsAndOddNames(t *testing.T) {
	h := chainHost(t)
	dir := t.TempDir()
	a := filepath.Join(dir, "layer-0000000000000001.qcow2")
	b := filepath.Join(dir, "layer-0000000000000002.qcow2")
	qemuImgCreate(t, h.cfg.QEMUImg, a, "1M")
	qemuImgCreate(t, h.cfg.QEMUImg, "-F", "qcow2", "-b", filepath.Base(a), b)
	// a now names b: a loop.
	if out, err := exec.Command(h.cfg.QEMUImg, "rebase", "-u", "-F", "qcow2", "-b", filepath.Base(b), a).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, err := Chain(b); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("a looping chain: %v", err)
	}
	if _, _, err := localLayers(b); err == nil {
		t.Fatal("a looping chain's local layers")
	}
	odd := filepath.Join(dir, "odd.qcow2")
	qemuImgCreate(t, h.cfg.QEMUImg, "-F", "qcow2", "-b", "../etc/passwd", "-u", odd, "1M")
	if err := LinkLayers(odd, t.TempDir()); err == nil || !strings.Contains(err.Error(), "unexpected backing file name") {
		t.Fatalf("a backing name outside the directory: %v", err)
	}
}

func stat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
