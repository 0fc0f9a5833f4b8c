package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// GuestUser is the user sandboxes' commands run as, in every image (E2B's).
const (
	GuestUser = "user"
	guestUID  = 1000
)

// Provision makes the root file system tree (an OCI image's, unpacked) bootable as a Cell guest,
// as the base image's recipe does for its own: envd as init, the resolver through /run, and the
// user `user` (uid 1000 unless the image uses it) with a home and, where the image has sudo,
// sudo without a password. Every path is resolved inside tree: the image's links cannot lead
// the writes out of it. It returns the uid given to `user`.
func Provision(tree string, envd []byte) (int, error) {
	root, err := os.OpenRoot(tree)
	if err != nil {
		return 0, err
	}
	defer func() { _ = root.Close() }()
	for _, d := range []string{"usr/bin", "etc", "run", "tmp", "proc", "sys", "dev", "home"} {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return 0, fmt.Errorf("provisioning: %s: %w", d, err)
		}
	}
	if err := root.Chmod("tmp", 0o777|fs.ModeSticky); err != nil {
		return 0, fmt.Errorf("provisioning: tmp: %w", err)
	}
	if err := writeNew(root, "usr/bin/envd", envd, 0o755); err != nil {
		return 0, err
	}
	// envd writes the resolver at every boot (see the base recipe): into /run, a tmpfs.
	if err := root.RemoveAll("etc/resolv.conf"); err != nil {
		return 0, fmt.Errorf("provisioning: etc/resolv.conf: %w", err)
	}
	if err := root.Symlink("../run/resolv.conf", "etc/resolv.conf"); err != nil {
		return 0, fmt.Errorf("provisioning: etc/resolv.conf: %w", err)
	}
	uid, err := addUser(root)
	if err != nil {
		return 0, fmt.Errorf("provisioning the user %s: %w", GuestUser, err)
	}
	return uid, nil
}

// writeNew replaces name in root with a file of data.
func writeNew(root *os.Root, name string, data []byte, mode fs.FileMode) error {
	if err := root.RemoveAll(name); err != nil {
		return fmt.Errorf("provisioning: %s: %w", name, err)
	}
	if err := root.WriteFile(name, data, mode); err != nil {
		return fmt.Errorf("provisioning: %s: %w", name, err)
	}
	return root.Chmod(name, mode)
}

// addUser adds `user` to the image's passwd and group files (unless it is there) with a home,
// and sudo rights when the image has sudo.
func addUser(root *os.Root) (int, error) {
	passwd, err := readOptional(root, "etc/passwd")
	if err != nil {
		return 0, err
	}
	group, err := readOptional(root, "etc/group")
	if err != nil {
		return 0, err
	}
	uid, gid, home := -1, -1, "/home/"+GuestUser
	usedUID, usedGID := ids(passwd, 2), ids(group, 2)
	for _, f := range records(passwd) {
		if len(f) >= 6 && f[0] == GuestUser {
			uid, _ = strconv.Atoi(f[2])
			gid, _ = strconv.Atoi(f[3])
			if f[5] != "" {
				home = f[5]
			}
		}
	}
	if uid < 0 {
		uid = free(usedUID, guestUID)
		gid = uid
		if usedGID[gid] {
			gid = free(usedGID, guestUID)
		}
		shell := "/bin/sh"
		if fi, err := root.Stat("bin/bash"); err == nil && fi.Mode().IsRegular() {
			shell = "/bin/bash"
		}
		passwd = appendLine(passwd, fmt.Sprintf("%s:x:%d:%d::%s:%s", GuestUser, uid, gid, home, shell))
		if err := writeNew(root, "etc/passwd", passwd, 0o644); err != nil {
			return 0, err
		}
		if !hasName(group, GuestUser) {
			group = appendLine(group, fmt.Sprintf("%s:x:%d:", GuestUser, gid))
			if err := writeNew(root, "etc/group", group, 0o644); err != nil {
				return 0, err
			}
		}
		if shadow, err := readOptional(root, "etc/shadow"); err == nil && shadow != nil && !hasName(shadow, GuestUser) {
			if err := writeNew(root, "etc/shadow", appendLine(shadow, GuestUser+":!:19000:0:99999:7:::"), 0o640); err != nil {
				return 0, err
			}
		}
	}
	h := strings.TrimPrefix(home, "/")
	if h == "" || strings.Contains(h, "..") {
		return 0, fmt.Errorf("home directory %q", home)
	}
	if err := root.MkdirAll(h, 0o755); err != nil {
		return 0, err
	}
	if err := root.Lchown(h, uid, max(gid, 0)); err != nil {
		return 0, err
	}
	if fi, err := root.Stat("etc/sudoers.d"); err == nil && fi.IsDir() {
		if err := writeNew(root, "etc/sudoers.d/"+GuestUser, []byte(GuestUser+" ALL=(ALL:ALL) NOPASSWD: ALL\n"), 0o440); err != nil {
			return 0, err
		}
	}
	return uid, nil
}

// maxAccountsFile bounds the image's passwd, group and shadow files, which are read whole.
const maxAccountsFile = 4 << 20

func readOptional(root *os.Root, name string) ([]byte, error) {
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, maxAccountsFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(b) > maxAccountsFile {
		return nil, fmt.Errorf("%s: more than %d bytes", name, maxAccountsFile)
	}
	return b, nil
}

// records splits a passwd-style file into its lines' fields.
func records(b []byte) [][]string {
	var out [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, strings.Split(line, ":"))
		}
	}
	// A line longer than the buffer ends the reading there: what follows is not an account
	// Cell needs (its own line is appended whole).
	return out
}

func ids(b []byte, field int) map[int]bool {
	m := map[int]bool{}
	for _, f := range records(b) {
		if len(f) > field {
			if n, err := strconv.Atoi(f[field]); err == nil {
				m[n] = true
			}
		}
	}
	return m
}

func hasName(b []byte, name string) bool {
	for _, f := range records(b) {
		if f[0] == name {
			return true
		}
	}
	return false
}

func free(used map[int]bool, from int) int {
	for used[from] {
		from++
	}
	return from
}

func appendLine(b []byte, line string) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return append(b, line+"\n"...)
}

// MakeDisk turns the tree into an ext4 file system of size bytes (sparse) in the qcow2 file out.
func MakeDisk(ctx context.Context, tree, out string, size int64) error {
	raw := out + ".raw"
	defer func() { _ = os.Remove(raw) }()
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	steps := [][]string{
		{"mkfs.ext4", "-q", "-F", "-L", "cellroot", "-E", "root_owner=0:0", "-d", tree, raw},
		{"qemu-img", "convert", "-q", "-O", "qcow2", raw, out},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", s[0], err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
