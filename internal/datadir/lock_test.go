package datadir

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestOneHolderAtATime(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home")
	first, err := Acquire(dir, "cell serve")
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to open file descriptions: a second Acquire in this process is
	// refused just as another process's would be.
	_, err = Acquire(dir, "cell serve")
	var inUse *InUseError
	if !errors.As(err, &inUse) || !errors.Is(err, ErrInUse) {
		t.Fatalf("second Acquire: %v, want an InUseError", err)
	}
	if inUse.PID != os.Getpid() || inUse.What != "cell serve" {
		t.Errorf("holder %d %q, want %d %q", inUse.PID, inUse.What, os.Getpid(), "cell serve")
	}
	for _, want := range []string{dir, "cell serve", "pid", "--home"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not mention %q", err, want)
		}
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	if err := first.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	again, err := Acquire(dir, "cell image build")
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	_ = again.Release()
}

// A process the holder starts (QEMU, which may outlive the daemon) does not inherit the lock.
func TestChildrenDoNotHoldTheLock(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, "cell serve")
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := Acquire(dir, "cell serve")
	if err != nil {
		t.Fatalf("the child kept the lock: %v", err)
	}
	_ = l2.Release()
}

// A lock file left by a process that died holds nothing (the kernel dropped its flock), and its
// content, whatever it is, only feeds the message.
func TestStaleOrGarbageLockFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, LockFile), []byte("999999 cell serve\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Acquire(dir, "cell serve")
	if err != nil {
		t.Fatalf("a stale lock file blocked Acquire: %v", err)
	}
	_ = l.Release()
	for _, garbage := range []string{"", "x", "-5 y", strings.Repeat("9", 5000)} {
		_ = os.WriteFile(filepath.Join(dir, LockFile), []byte(garbage), 0o600)
		if pid, _ := readHolder(filepath.Join(dir, LockFile)); pid != 0 {
			t.Errorf("%q: pid %d", garbage[:min(len(garbage), 10)], pid)
		}
	}
}

// The lock is never taken through a link someone left in its place.
func TestLockFileIsNotFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Symlink(target, filepath.Join(dir, LockFile)); err != nil {
		t.Fatal(err)
	}
	if l, err := Acquire(dir, "cell serve"); err == nil {
		_ = l.Release()
		t.Fatal("Acquire followed a symbolic link")
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the link's target was created: %v", err)
	}
}

// Release leaves the directory as it found it, and a lock taken on a file that was released
// (removed) meanwhile is retaken on the new one: two holders never coexist.
func TestReleaseRemovesTheFile(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, "cell serve")
	if err != nil {
		t.Fatal(err)
	}
	// Another opener of the old file, as a racing Acquire would have.
	old, err := os.Open(filepath.Join(dir, LockFile))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = old.Close() }()
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, LockFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the lock file is left: %v", err)
	}
	a, err := Acquire(dir, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Release() }()
	if _, err := Acquire(dir, "b"); !errors.Is(err, ErrInUse) {
		t.Fatalf("a second holder: %v", err)
	}
}
