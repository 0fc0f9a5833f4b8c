package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testBuilder is a Builder over a fresh home with an envd binary of content (at b.Envd).
func testBuilder(t *testing.T, content string) *Builder {
	t.Helper()
	dir := t.TempDir()
	envd := filepath.Join(dir, "envd")
	if err := os.WriteFile(envd, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Builder{Home: dir, Envd: envd}
}

func TestKeysFollowRecipeInputs(t *testing.T) {
	b := testBuilder(t, "envd v1")
	dir, envd := b.Home, b.Envd
	k1, err := b.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(envd, []byte("envd v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	k2, err := b.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if k1.Kernel != k2.Kernel || k1.Tree != k2.Tree || k1.QEMU != k2.QEMU {
		t.Fatal("kernel, tree or QEMU key depends on envd")
	}
	if k1.Disk == k2.Disk {
		t.Fatal("disk key does not depend on envd")
	}
	if len(map[string]bool{k1.Kernel: true, k1.Tree: true, k1.Disk: true, k1.QEMU: true}) != 4 {
		t.Fatalf("two parts share a key: %+v", k1)
	}
	img := b.image(k1)
	if !strings.HasPrefix(img.QEMU, filepath.Join(dir, "images", "qemu", k1.QEMU)+"/") {
		t.Fatalf("QEMU path %s is not under its recipe's directory", img.QEMU)
	}
	if _, err := b.Lookup(); err == nil || !strings.Contains(err.Error(), "cell image build") {
		t.Fatalf("Lookup on an empty home: %v", err)
	}
	b.Envd = filepath.Join(dir, "missing")
	if _, err := b.Lookup(); err == nil || !strings.Contains(err.Error(), "envd") {
		t.Fatalf("missing envd: %v", err)
	}
}

func TestPublishIsAtomic(t *testing.T) {
	dir := t.TempDir()
	b := &Builder{Home: dir}
	final := filepath.Join(dir, "images", "x", "key")
	boom := errors.New("boom")
	err := b.publish(context.Background(), final, func(tmp string) error {
		_ = os.WriteFile(filepath.Join(tmp, "half"), []byte("x"), 0o644)
		return boom
	}, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(final)); len(entries) != 0 {
		t.Fatalf("a failed build left %d entries", len(entries))
	}
	for _, content := range []string{"one", "two"} {
		if err := b.publish(context.Background(), final, func(tmp string) error {
			return os.WriteFile(filepath.Join(tmp, "f"), []byte(content), 0o644)
		}, nil); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(final, "f"))
		if err != nil || string(got) != content {
			t.Fatalf("after publish: %q %v", got, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(final)); len(entries) != 1 {
		t.Fatalf("publish left %d entries, want 1", len(entries))
	}
}

func TestLockWaitsAndHonoursContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".lock")
	unlock, err := lock(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := lock(ctx, p); err == nil || !strings.Contains(err.Error(), "another image build") {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	unlock2, err := lock(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func TestEnvdHashMemo(t *testing.T) {
	dir := t.TempDir()
	envd := filepath.Join(dir, "envd")
	if err := os.WriteFile(envd, []byte("envd one"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Builder{Home: dir, Envd: envd}
	// A freshly written file is not remembered (its timestamp may not change on the next write).
	first, err := b.envdHash()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.dir(".envd-sum")); err == nil {
		t.Fatal("sum of a just-modified file was remembered")
	}
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(envd, old, old); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.envdHash(); got != first {
		t.Fatal("hash changed without a change to the file")
	}
	if _, err := os.Stat(b.dir(".envd-sum")); err != nil {
		t.Fatalf("sum of a settled file not remembered: %v", err)
	}
	// A changed file (same size, new time) is hashed again, not served from the memo.
	if err := os.WriteFile(envd, []byte("envd two"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.envdHash(); got == first {
		t.Fatal("memo served the sum of the old file")
	}
}

// TestQEMUFallback: when Cell's QEMU could not be built for this recipe, the image uses
// Debian's and says why, until a forced build tries again.
func TestQEMUFallback(t *testing.T) {
	if _, err := os.Stat(systemQEMU); err != nil {
		t.Fatalf("Debian's QEMU is needed for this test (apt-get install qemu-system-x86): %v", err)
	}
	b := testBuilder(t, "envd")
	k, err := b.Keys()
	if err != nil {
		t.Fatal(err)
	}
	img := b.image(k)
	for _, p := range []string{img.Kernel, img.Disk} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Lookup(); err == nil || !strings.Contains(err.Error(), "qemu") {
		t.Fatalf("Lookup without QEMU: %v", err)
	}
	if err := os.MkdirAll(b.dir("qemu"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.qemuFailed(k), []byte("no source index\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := b.Lookup()
	if err != nil {
		t.Fatal(err)
	}
	if got.QEMU != systemQEMU || got.QEMUFallback != "no source index" || !strings.Contains(got.QEMUInfo(), "no source index") {
		t.Fatalf("fallback image: QEMU %s, why %q, info %q", got.QEMU, got.QEMUFallback, got.QEMUInfo())
	}
	// Another recipe's note goes with a prune; this one's stays.
	other := b.dir("qemu", "0000000000000000.failed")
	if err := os.WriteFile(other, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prune(context.Background(), func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("an earlier recipe's failure note was kept")
	}
	if _, err := os.Stat(b.qemuFailed(k)); err != nil {
		t.Fatalf("the current recipe's failure note went: %v", err)
	}
}
