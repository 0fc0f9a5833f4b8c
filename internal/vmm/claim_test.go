package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestClaimDir(t *testing.T) {
	dir := t.TempDir()
	if Claimed(dir) {
		t.Fatal("a directory without a claim file is claimed")
	}
	f, err := claimDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// flock belongs to the open file: another open, as another process's, sees the claim.
	if !Claimed(dir) {
		t.Fatal("a held claim is not seen")
	}
	if _, err := claimDir(dir); !errors.Is(err, ErrClaimed) {
		t.Fatalf("a second claim: %v, want ErrClaimed", err)
	}
	_ = f.Close()
	if Claimed(dir) {
		t.Fatal("a released claim is still seen")
	}
	g, err := claimDir(dir)
	if err != nil {
		t.Fatalf("claiming again: %v", err)
	}
	_ = g.Close()
}

func TestClaimFileIsNotFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Symlink(target, filepath.Join(dir, claimFile)); err != nil {
		t.Fatal(err)
	}
	if f, err := claimDir(dir); err == nil {
		_ = f.Close()
		t.Fatal("claimDir followed a link")
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the link's target was created: %v", err)
	}
}
