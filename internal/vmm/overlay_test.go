package vmm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOverlaysAreReusedPerBackingDisk(t *testing.T) {
	qemuImg := needQEMUImg(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImgCreate(t, qemuImg, base, "64M")
	var o overlays
	ctx := context.Background()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	if err := o.create(ctx, qemuImg, "", base, base, a); err != nil {
		t.Fatal(err)
	}
	if err := o.create(ctx, qemuImg, "", base, base, b); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) || len(o.files) != 1 {
		t.Fatalf("the second overlay is not the cached one (%d cached)", len(o.files))
	}
	out, err := exec.Command(qemuImg, "info", b).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "backing file: "+base) {
		t.Fatalf("qemu-img info: %v %s", err, out)
	}
	if err := o.create(ctx, qemuImg, "", base, base, b); err == nil {
		t.Fatal("an existing file was overwritten")
	}
	// A replaced backing disk (new mtime) gets a new overlay.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(base, future, future); err != nil {
		t.Fatal(err)
	}
	if err := o.create(ctx, qemuImg, "", base, base, filepath.Join(dir, "c.qcow2")); err != nil || len(o.files) != 2 {
		t.Fatalf("after the disk changed: %v, %d cached", err, len(o.files))
	}
}

// twoLayers makes two 64 MiB qcow2 layers of their own names in a new directory.
func twoLayers(t *testing.T) (qemuImg, dir, la, lb string) {
	t.Helper()
	qemuImg = needQEMUImg(t)
	dir = t.TempDir()
	la, lb = newLayerName(), newLayerName()
	for _, l := range []string{la, lb} {
		qemuImgCreate(t, qemuImg, filepath.Join(dir, l), "64M")
	}
	return qemuImg, dir, la, lb
}

// TestOverlaysOnLayers: an overlay on a layer named relatively is made once by qemu-img; the next
// one on a layer of the same size is the same bytes with the name written over, and qemu-img
// finds it sound and backed by its own layer.
func TestOverlaysOnLayers(t *testing.T) {
	qemuImg, dir, la, lb := twoLayers(t)
	var o overlays
	ctx := context.Background()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	if err := o.create(ctx, qemuImg, "", filepath.Join(dir, la), la, a); err != nil {
		t.Fatal(err)
	}
	if err := o.create(ctx, qemuImg, "", filepath.Join(dir, lb), lb, b); err != nil {
		t.Fatal(err)
	}
	if len(o.files) != 1 {
		t.Fatalf("%d overlays cached, want the one per size", len(o.files))
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if len(ab) != len(bb) || bytes.Equal(ab, bb) {
		t.Fatal("the second overlay is not the first with another name")
	}
	out, err := exec.Command(qemuImg, "info", b).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "backing file: "+lb+" ") {
		t.Fatalf("qemu-img info: %v %s", err, out)
	}
	if out, err := exec.Command(qemuImg, "check", b).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v %s", err, out)
	}
	if err := o.create(ctx, qemuImg, "", filepath.Join(dir, la), "../"+la, filepath.Join(dir, "c.qcow2")); err == nil {
		t.Fatal("an overlay naming its backing file neither as a layer nor absolutely")
	}
}

// TestOverlayOptions: the operator's qcow2 options reach qemu-img, also for overlays on layers
// made by rewriting a cached one.
func TestOverlayOptions(t *testing.T) {
	qemuImg, dir, la, lb := twoLayers(t)
	var o overlays
	ctx := context.Background()
	const opts = "cluster_size=128k,extended_l2=on,lazy_refcounts=on"
	for i, l := range []string{la, lb} {
		p := filepath.Join(dir, fmt.Sprintf("o%d.qcow2", i))
		if err := o.create(ctx, qemuImg, opts, filepath.Join(dir, l), l, p); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(qemuImg, "info", p).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "cluster_size: 131072") || !strings.Contains(string(out), "extended l2: true") ||
			!strings.Contains(string(out), "lazy refcounts: true") || !strings.Contains(string(out), "backing file: "+l+" ") {
			t.Fatalf("overlay %d: %v\n%s", i, err, out)
		}
	}
	var fresh overlays
	base := filepath.Join(dir, "base.qcow2")
	qemuImgCreate(t, qemuImg, base, "64M")
	if err := fresh.create(ctx, qemuImg, "no_such_option=1", base, base, filepath.Join(dir, "bad.qcow2")); err == nil || !strings.Contains(err.Error(), "no_such_option") {
		t.Fatalf("a bad option: %v", err)
	}
}
