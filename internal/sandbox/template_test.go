package sandbox

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cellhq/cell/internal/image"
)

func TestLoadTemplateRefusesOtherMachinesAndIncompleteOnes(t *testing.T) {
	dir := t.TempDir()
	// A qcow2 header that gives the disk's size (3 GiB), which the template reports.
	disk := make([]byte, 32)
	copy(disk, "QFI\xfb")
	binary.BigEndian.PutUint64(disk[24:], 3<<30)
	for f, b := range map[string][]byte{"mem": []byte("x"), "state": []byte("x"), "disk.qcow2": disk} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"name":"base","fingerprint":"aaaa","memoryMiB":512,"cpus":2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if tp, err := loadTemplate(dir, "aaaa"); err != nil {
		t.Fatalf("matching template: %v", err)
	} else if tp.DiskBytes != 3<<30 {
		t.Fatalf("the template's disk has %d bytes, want 3 GiB", tp.DiskBytes)
	}
	if _, err := loadTemplate(dir, "bbbb"); err == nil || !strings.Contains(err.Error(), "another machine") {
		t.Fatalf("other machine's template loaded: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTemplate(dir, "aaaa"); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("incomplete template loaded: %v", err)
	}
}

func TestRemoveTemplateRefusesWhileSandboxesDependOnIt(t *testing.T) {
	qemuImg, err := FindTool("qemu-img", "qemu-utils")
	if err != nil {
		t.Fatal(err)
	}
	home, run, paused := t.TempDir(), t.TempDir(), t.TempDir()
	tdir := filepath.Join(home, "templates", "base", "0123456789abcdef")
	if err := os.MkdirAll(tdir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tdir, "meta.json"), []byte(`{"name":"base","fingerprint":"0123"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	img := func(path, backing string) {
		args := []string{"create", "-q", "-f", "qcow2", path, "16M"}
		if backing != "" {
			args = []string{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, path}
		}
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
	}
	tdisk := filepath.Join(tdir, "disk.qcow2")
	img(tdisk, "")
	// One running sandbox and one paused generation are overlays on the template's disk.
	for _, d := range []string{filepath.Join(run, "sb1"), filepath.Join(paused, "sb2", "g1")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		img(filepath.Join(d, "disk.qcow2"), tdisk)
	}
	list, err := ListTemplates(home, run, paused)
	if err != nil || len(list) != 1 || len(list[0].Users) != 2 {
		t.Fatalf("ls: %+v %v", list, err)
	}
	if err := RemoveTemplate(tdir, run, paused); !errors.Is(err, ErrTemplateInUse) || !strings.Contains(err.Error(), "sb1") || !strings.Contains(err.Error(), "sb2") {
		t.Fatalf("removing a used template: %v", err)
	}
	_ = os.RemoveAll(filepath.Join(run, "sb1"))
	_ = os.RemoveAll(filepath.Join(paused, "sb2"))
	if err := RemoveTemplate(tdir, run, paused); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tdir); !os.IsNotExist(err) {
		t.Fatalf("template still there: %v", err)
	}
}

// Outdated base templates go once nothing depends on them: not a running or paused sandbox, not
// a snapshot made from a sandbox of theirs; the current one, other names and builds under way stay.
func TestPruneTemplates(t *testing.T) {
	qemuImg, err := FindTool("qemu-img", "qemu-utils")
	if err != nil {
		t.Fatal(err)
	}
	home, run, paused := t.TempDir(), t.TempDir(), t.TempDir()
	mk := func(name, dir, backing string) string {
		d := filepath.Join(home, "templates", name, dir)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "meta.json"), []byte(`{"name":"`+name+`","fingerprint":"`+dir+`"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"create", "-q", "-f", "qcow2", filepath.Join(d, "disk.qcow2"), "16M"}
		if backing != "" {
			args = []string{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, filepath.Join(d, "disk.qcow2")}
		}
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
		return d
	}
	unused := mk("base", "1111111111111111", "")
	usedByRun := mk("base", "2222222222222222", "")
	usedBySnapshot := mk("base", "3333333333333333", "")
	building := mk("base", ".staging-x", "")
	cur := mk("base", "4444444444444444", "")
	snap := mk("mysnap", "5555555555555555", filepath.Join(usedBySnapshot, "disk.qcow2"))
	sb := filepath.Join(run, "sb1")
	if err := os.MkdirAll(sb, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
		filepath.Join(usedByRun, "disk.qcow2"), filepath.Join(sb, "disk.qcow2")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	// A released VM's directory, still being removed, holds nothing: no live VM uses it.
	released := filepath.Join(run, ".gone-sb0-abcdefgh")
	if err := os.MkdirAll(released, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
		filepath.Join(unused, "disk.qcow2"), filepath.Join(released, "disk.qcow2")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	if err := RemoveTemplate(usedBySnapshot, run, paused); !errors.Is(err, ErrTemplateInUse) || !strings.Contains(err.Error(), "mysnap") {
		t.Fatalf("removing a template a snapshot depends on: %v", err)
	}
	gone, err := PruneTemplates(home, "base", cur, run, paused)
	if err != nil || len(gone) != 1 || gone[0].Dir != unused {
		t.Fatalf("pruned %+v, %v; want only %s", gone, err, unused)
	}
	for _, d := range []string{usedByRun, usedBySnapshot, building, cur, snap} {
		if _, err := os.Stat(filepath.Join(d, "meta.json")); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
	if _, err := os.Stat(unused); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", unused, err)
	}
}

// TestPruneImages: only the current image's artifacts stay, and the outdated base disks that a
// template's, a running or a paused sandbox's disk is an overlay on.
func TestPruneImages(t *testing.T) {
	qemuImg, err := FindTool("qemu-img", "qemu-utils")
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	run, paused := filepath.Join(home, "run"), filepath.Join(home, "paused")
	envd := filepath.Join(home, "envd")
	if err := os.WriteFile(envd, []byte("envd"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &image.Builder{Home: home, Envd: envd}
	cur, err := b.Keys()
	if err != nil {
		t.Fatal(err)
	}
	qcow := func(path, backing string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		args := []string{"create", "-q", "-f", "qcow2", path, "16M"}
		if backing != "" {
			args = []string{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, path}
		}
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
	}
	img := func(parts ...string) string { return filepath.Join(append([]string{home, "images"}, parts...)...) }
	for _, k := range []string{cur.Disk, "old-template", "old-run", "old-paused", "old-unused"} {
		qcow(img("base", k, "rootfs.qcow2"), "")
	}
	for _, d := range []string{img("kernel", cur.Kernel), img("kernel", "old"), img("rootfs", cur.Tree),
		img("rootfs", "old"), img("qemu", cur.QEMU), img("qemu", "old"), img("base", cur.Disk+".tmp-x")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	qcow(filepath.Join(home, "templates", "base", "t1", "disk.qcow2"), img("base", "old-template", "rootfs.qcow2"))
	qcow(filepath.Join(run, "sb1", "disk.qcow2"), img("base", "old-run", "rootfs.qcow2"))
	qcow(filepath.Join(paused, "sb2", "g1", "disk.qcow2"), img("base", "old-paused", "rootfs.qcow2"))

	removed, err := PruneImages(context.Background(), b, home, run, paused)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{img("base", "old-unused"), img("base", cur.Disk+".tmp-x"), img("kernel", "old"), img("qemu", "old"), img("rootfs", "old")}
	slices.Sort(removed)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Fatalf("removed %v\nwant    %v", removed, want)
	}
	for _, p := range append(want, img("base", "old-unused", "rootfs.qcow2")) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s is still there", p)
		}
	}
	for _, k := range []string{cur.Disk, "old-template", "old-run", "old-paused"} {
		if _, err := os.Stat(img("base", k, "rootfs.qcow2")); err != nil {
			t.Fatalf("base %s went: %v", k, err)
		}
	}
}
