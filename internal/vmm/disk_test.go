package vmm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAdmit(t *testing.T) {
	const gib = 1 << 30
	def, err := ParseReserve(DefaultMinFreeDisk)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name               string
		avail, total, size uint64
		r                  Reserve
		ok                 bool
	}{
		{"room to spare", 50 * gib, 100 * gib, 2 * gib, def, true},
		// 5% of 100 GiB (5 GiB) is more than 2 GiB: 7 GiB free leaves exactly 2.
		{"exactly fits above the percentage", 7 * gib, 100 * gib, 2 * gib, def, true},
		{"one byte short of the percentage", 7*gib - 1, 100 * gib, 2 * gib, def, false},
		// On a small disk the 2 GiB floor is the larger.
		{"exactly fits above the floor", 4 * gib, 10 * gib, 2 * gib, def, true},
		{"one byte short of the floor", 4*gib - 1, 10 * gib, 2 * gib, def, false},
		{"less free than the reserve", 1 * gib, 10 * gib, 0, def, false},
		{"nothing free", 0, 10 * gib, 1, def, false},
		{"no reserve", 2 * gib, 10 * gib, 2 * gib, Reserve{}, true},
		{"no reserve, too small", 2*gib - 1, 10 * gib, 2 * gib, Reserve{}, false},
		{"a huge size does not wrap around", 50 * gib, 100 * gib, ^uint64(0), def, false},
		{"the whole disk as reserve", 100 * gib, 100 * gib, 1, Reserve{Percent: 100}, false},
	}
	for _, c := range cases {
		err := admit(c.avail, c.total, c.size, c.r, "a sandbox disk")
		if (err == nil) != c.ok {
			t.Errorf("%s: admit(%d, %d, %d, %v) = %v, want ok=%v", c.name, c.avail, c.total, c.size, c.r, err, c.ok)
		}
		if err != nil && (!errors.Is(err, ErrInsufficientStorage) || !strings.Contains(err.Error(), "a sandbox disk")) {
			t.Errorf("%s: %v does not say what did not fit", c.name, err)
		}
	}
}

func TestParseReserve(t *testing.T) {
	good := map[string]Reserve{
		"2GiB,5%":      {Bytes: 2 << 30, Percent: 5},
		"5%, 2G":       {Bytes: 2 << 30, Percent: 5},
		"10%":          {Percent: 10},
		"512MiB":       {Bytes: 512 << 20},
		"0":            {},
		"1.5%":         {Percent: 1.5},
		"100%":         {Percent: 100},
		"1t":           {Bytes: 1 << 40},
		"4096B":        {Bytes: 4096},
		"1536MiB":      {Bytes: 1536 << 20},
		" 64 KiB , 0%": {Bytes: 64 << 10},
	}
	for in, want := range good {
		got, err := ParseReserve(in)
		if err != nil || got != want {
			t.Errorf("ParseReserve(%q) = %+v, %v; want %+v", in, got, err, want)
			continue
		}
		// What String writes parses back to the same reserve.
		if back, err := ParseReserve(got.String()); err != nil || back != got {
			t.Errorf("%q -> %q -> %+v, %v", in, got.String(), back, err)
		}
	}
	for _, in := range []string{"", "5", "4096", "%", "-1%", "101%", "NaN%", "2GiB,3GiB", "5%,6%", "2 GB free", "1.5GiB", "-2G",
		"99999999999999999999", "20000000T", "2GiB;5%", "0x10"} {
		if r, err := ParseReserve(in); err == nil {
			t.Errorf("ParseReserve(%q) = %+v, want an error", in, r)
		}
	}
}

func FuzzParseReserve(f *testing.F) {
	for _, s := range []string{DefaultMinFreeDisk, "10%", "512MiB", "1.5%", "0", "2GiB,3GiB", "1e3%", "18446744073709551615B", "16777216T", "5", "0x10%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReserve(s)
		if err != nil {
			return
		}
		if r.Percent < 0 || r.Percent > 100 {
			t.Fatalf("%q: percentage %v out of range", s, r.Percent)
		}
		// What String writes parses back to the same reserve.
		if back, err := ParseReserve(r.String()); err != nil || back != r {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, r, r.String(), back, err)
		}
		// The reserve of any file system is at least its bytes, and never more than the
		// larger of its bytes and the file system.
		for _, total := range []uint64{0, 1 << 30, ^uint64(0)} {
			if got := r.Of(total); got < r.Bytes || got > max(r.Bytes, total) {
				t.Fatalf("%q: reserve of %d is %d", s, total, got)
			}
		}
	})
}

func TestDiskVirtualSize(t *testing.T) {
	qemuImg := needQEMUImg(t)
	dir := t.TempDir()
	base, ov := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "ov.qcow2")
	for _, args := range [][]string{{"create", "-q", "-f", "qcow2", base, "96M"}, {"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, ov}} {
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	for _, p := range []string{base, ov} {
		if n, err := DiskVirtualSize(p); err != nil || n != 96<<20 {
			t.Errorf("%s: %d, %v; want 96 MiB", p, n, err)
		}
	}
	raw := filepath.Join(dir, "raw")
	if err := os.WriteFile(raw, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := DiskVirtualSize(raw); err == nil {
		t.Error("a raw file was read as qcow2")
	}
}

// TestStartAdmitsDisks: a VM whose disk could grow past the host's free space (beyond the
// reserve) is refused before anything is made for it, and so is a disk smaller than the one it
// starts from (the guest's file system fills that one). The free space is the boundary broken on
// purpose.
func TestStartAdmitsDisks(t *testing.T) {
	qemuImg := needQEMUImg(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImgCreate(t, qemuImg, base, "64M")
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var asked string
	h, err := NewHost(Config{QEMU: "/usr/bin/qemu-system-x86_64", QEMUImg: qemuImg, RunDir: t.TempDir(), MaxVMs: 1, TSCkHz: 1000000,
		Disk: &DiskGuard{Dir: "/the/run/dir", Reserve: Reserve{Bytes: 100 << 20}, Space: func(d string) (uint64, uint64, error) {
			asked = d
			return 200 << 20, 1 << 40, nil // 100 MiB beyond the reserve
		}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	spec := Spec{ID: "a1", Kernel: kernel, BaseDisk: base, MemoryMiB: 256, CPUs: 1, Accel: AccelTCG, DiskBytes: 101 << 20}
	if _, err := h.Start(ctx, spec); !errors.Is(err, ErrInsufficientStorage) || asked != "/the/run/dir" {
		t.Fatalf("a 101 MiB disk with 100 MiB to spare: %v (space of %q)", err, asked)
	}
	spec.DiskBytes = 63 << 20
	if _, err := h.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "below") {
		t.Fatalf("a disk smaller than its base: %v", err)
	}
	spec.DiskBytes = 64<<20 + 512
	if _, err := h.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "MiB") {
		t.Fatalf("a disk of a part of a MiB: %v", err)
	}
	if entries, _ := os.ReadDir(h.cfg.RunDir); len(entries) != 0 || func() bool { used, _ := h.slots.inUse(); return used != 0 }() {
		t.Fatalf("a refused start left %d entries or held its slot", len(entries))
	}
}

// TestStatfsSpace: the space is read from the file system that holds the directory, or will: the
// run directory does not exist before the first VM.
func TestStatfsSpace(t *testing.T) {
	dir := t.TempDir()
	avail, total, err := statfsSpace(dir)
	if err != nil || total == 0 || avail > total {
		t.Fatalf("%s: %d of %d, %v", dir, avail, total, err)
	}
	if a, tot, err := statfsSpace(filepath.Join(dir, "run", "not", "yet")); err != nil || tot != total {
		t.Fatalf("a directory still to be made: %d of %d, %v", a, tot, err)
	}
	if err := (&DiskGuard{Dir: filepath.Join(dir, "run")}).Admit(1, "a byte"); err != nil {
		t.Fatalf("one byte on a missing run directory's file system: %v", err)
	}
}
