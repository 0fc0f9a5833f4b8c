package image

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestProvisionAddsUserEnvdAndResolver(t *testing.T) {
	tree := writeTree(t, map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/bash\nnode:x:1000:1000::/home/node:/bin/bash",
		"etc/group":       "root:x:0:\nnode:x:1000:\n",
		"etc/shadow":      "root:*:19000:0:99999:7:::\n",
		"etc/resolv.conf": "nameserver 8.8.8.8\n",
		"etc/sudoers.d/":  "",
		"bin/bash":        "#!",
	})
	uid, err := Provision(tree, []byte("ENVD"))
	if err != nil {
		t.Fatal(err)
	}
	if uid != 1001 {
		t.Errorf("uid %d, want 1001 (1000 is node's)", uid)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(tree, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return string(b)
	}
	if got := read("etc/passwd"); !strings.Contains(got, "\nuser:x:1001:1001::/home/user:/bin/bash\n") || !strings.Contains(got, "node:x:1000") {
		t.Errorf("etc/passwd:\n%s", got)
	}
	if got := read("etc/group"); !strings.Contains(got, "user:x:1001:") {
		t.Errorf("etc/group:\n%s", got)
	}
	if got := read("etc/shadow"); !strings.Contains(got, "user:!:") {
		t.Errorf("etc/shadow:\n%s", got)
	}
	if got := read("etc/sudoers.d/user"); got != "user ALL=(ALL:ALL) NOPASSWD: ALL\n" {
		t.Errorf("sudoers: %q", got)
	}
	if got := read("usr/bin/envd"); got != "ENVD" {
		t.Errorf("envd: %q", got)
	}
	if fi, _ := os.Stat(filepath.Join(tree, "usr/bin/envd")); fi == nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("envd's mode: %v", fi)
	}
	if l, err := os.Readlink(filepath.Join(tree, "etc/resolv.conf")); err != nil || l != "../run/resolv.conf" {
		t.Errorf("etc/resolv.conf -> %q, %v", l, err)
	}
	fi, err := os.Stat(filepath.Join(tree, "home/user"))
	if err != nil || !fi.IsDir() {
		t.Fatalf("home: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && st.Uid != 1001 {
		t.Errorf("home is owned by %d", st.Uid)
	}
	// Again: nothing is added twice.
	if uid, err := Provision(tree, []byte("ENVD2")); err != nil || uid != 1001 {
		t.Fatalf("second provision: %d, %v", uid, err)
	}
	if n := strings.Count(read("etc/passwd"), "\nuser:"); n != 1 {
		t.Errorf("user is in etc/passwd %d times", n)
	}
}

func TestProvisionBareImage(t *testing.T) {
	tree := t.TempDir() // no /etc at all: a scratch image
	uid, err := Provision(tree, []byte("ENVD"))
	if err != nil || uid != 1000 {
		t.Fatalf("%d, %v", uid, err)
	}
	b, _ := os.ReadFile(filepath.Join(tree, "etc/passwd"))
	if string(b) != "user:x:1000:1000::/home/user:/bin/sh\n" {
		t.Errorf("etc/passwd: %q", b)
	}
	if _, err := os.Stat(filepath.Join(tree, "etc/sudoers.d/user")); err == nil {
		t.Error("sudoers written into an image without sudo")
	}
}

// TestProvisionStaysInside: an image whose /etc leads out of the tree gets an error, and the
// host's files stay as they are.
func TestProvisionStaysInside(t *testing.T) {
	top := t.TempDir()
	tree, outside := filepath.Join(top, "tree"), filepath.Join(top, "outside")
	for _, d := range []string{tree, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "passwd"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../outside", filepath.Join(tree, "etc")); err != nil {
		t.Fatal(err)
	}
	if _, err := Provision(tree, []byte("ENVD")); err == nil {
		t.Error("provisioned a tree whose etc leads out of it")
	}
	des, _ := os.ReadDir(outside)
	if b, _ := os.ReadFile(filepath.Join(outside, "passwd")); string(b) != "host\n" || len(des) != 1 {
		t.Errorf("outside the tree: passwd %q, %d entries", b, len(des))
	}
}

func TestProvisionRefusesHugeAccountFiles(t *testing.T) {
	tree := writeTree(t, map[string]string{"etc/passwd": strings.Repeat("x:x:1:1::/:/bin/sh\n", 300_000)})
	if _, err := Provision(tree, []byte("ENVD")); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("a 5.7 MB passwd: %v", err)
	}
}
