package image

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/images"
	"github.com/cellhq/cell/internal/datadir"
)

// DiskSizeBytes is the size of the base ext4 file system (sparse).
const DiskSizeBytes = 2 << 30

// Image is a bootable guest image and the QEMU built to run it.
type Image struct {
	Kernel string // PVH vmlinux
	Disk   string // qcow2 base disk with envd as init
	QEMU   string // Cell's static qemu-system-x86_64, or Debian's when that build failed
	// QEMUFallback, when set, says why Cell's QEMU could not be built (QEMU is Debian's).
	QEMUFallback string
	Keys         Keys // the recipes the parts were built from
}

// Keys name every part of an image by the hash of its recipe: the names of their directories
// under images/kernel, images/rootfs, images/base and images/qemu.
type Keys struct {
	Kernel, Tree, Disk, QEMU string
}

// Builder finds or builds the image under Home.
type Builder struct {
	Home     string    // the data directory ($CELL_HOME)
	Envd     string    // the envd binary to install as init
	Progress io.Writer // human progress lines; nil for none
	Log      *slog.Logger
}

func (b *Builder) dir(parts ...string) string {
	return filepath.Join(append([]string{datadir.Layout{Home: b.Home}.Images()}, parts...)...)
}

func (b *Builder) progress(format string, args ...any) {
	if b.Progress != nil {
		fmt.Fprintf(b.Progress, format+"\n", args...)
	}
}

func hashOf(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func recipe(name string) []byte {
	b, err := images.Recipes.ReadFile(name)
	if err != nil {
		panic(fmt.Sprintf("embedded recipe %s missing: %v", name, err)) // a build defect
	}
	return b
}

// linuxSourceID identifies the kernel source tarball cheaply (no exec on the `cell run` path):
// its size and modification time change whenever the package is upgraded.
func linuxSourceID() string {
	matches, _ := filepath.Glob("/usr/src/linux-source-6.1.tar.*")
	if len(matches) == 0 {
		return ""
	}
	st, err := os.Stat(matches[0])
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s|%d|%d", matches[0], st.Size(), st.ModTime().UnixNano())
}

// systemQEMU is Debian's QEMU. Cell builds its own from the same source version, and uses the
// package's firmware (qboot).
const systemQEMU = "/usr/bin/qemu-system-x86_64"

// qemuPackageID identifies the installed qemu-system-x86 cheaply (no exec on the `cell run`
// path): an upgrade changes its binary's size or modification time, and Cell's QEMU is rebuilt
// from the new source.
func qemuPackageID() string {
	st, err := os.Stat(systemQEMU)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s|%d|%d", systemQEMU, st.Size(), st.ModTime().UnixNano())
}

// linuxSourceVersion is the installed linux-source-6.1 package version ("" if not installed).
func linuxSourceVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "linux-source-6.1").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// Keys returns the current image's recipe hashes.
func (b *Builder) Keys() (Keys, error) {
	var k Keys
	k.Kernel = hashOf([]byte("kernel-v1"), recipe("kernel/fragment.config"), recipe("kernel/build.sh"),
		[]byte(linuxSourceID()))
	k.Tree = hashOf([]byte("rootfs-v1"), recipe("rootfs/build.sh"))
	k.QEMU = hashOf([]byte("qemu-v1"), recipe("qemu/build.sh"), recipe("qemu/devices.mak"),
		recipe("qemu/acpi-stub.patch"), recipe("qemu/tcg-ss32.patch"), recipe("qemu/discard-private.patch"),
		[]byte(qemuPackageID()))
	envdSum, err := b.envdHash()
	if err != nil {
		return k, fmt.Errorf("envd binary: %w (build it with `make build`)", err)
	}
	k.Disk = hashOf([]byte("disk-v1"), []byte(k.Tree), []byte(envdSum), []byte(fmt.Sprint(DiskSizeBytes)))
	return k, nil
}

// envdHash is the sha256 of the envd binary. Hashing 9 MB costs tens of milliseconds, so the sum
// is remembered in the data directory next to the file's identity (device, inode, size, mtime).
func (b *Builder) envdHash() (string, error) {
	st, err := os.Stat(b.Envd)
	if err != nil {
		return "", err
	}
	var ident string
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ident = fmt.Sprintf("%s|%d|%d|%d|%d", b.Envd, sys.Dev, sys.Ino, st.Size(), st.ModTime().UnixNano())
	}
	memo := b.dir(".envd-sum")
	if ident != "" {
		if data, err := os.ReadFile(memo); err == nil {
			if id, sum, ok := strings.Cut(string(data), "\n"); ok && id == ident && len(sum) == 64 {
				return sum, nil
			}
		}
	}
	f, err := os.Open(b.Envd)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// Like git's racy-clean rule: a file modified within the last seconds may change again within
	// the same timestamp tick, so its sum is not remembered yet.
	if ident != "" && time.Since(st.ModTime()) > 2*time.Second && os.MkdirAll(b.dir(), 0o755) == nil {
		tmp := memo + ".tmp-" + rand.Text()[:8]
		if os.WriteFile(tmp, []byte(ident+"\n"+sum), 0o644) == nil {
			_ = os.Rename(tmp, memo)
		}
	}
	return sum, nil
}

// Lookup returns the image if it is fully built, without building anything.
func (b *Builder) Lookup() (Image, error) {
	k, err := b.Keys()
	if err != nil {
		return Image{}, err
	}
	img := b.image(k)
	if !exists(img.QEMU) {
		// A build that failed for this recipe says so (and Debian's QEMU stands in) until
		// `cell image build --force` tries again.
		if why, err := os.ReadFile(b.qemuFailed(k)); err == nil {
			img.QEMU, img.QEMUFallback = systemQEMU, strings.TrimSpace(string(why))
		}
	}
	for _, p := range []string{img.Kernel, img.Disk, img.QEMU} {
		if _, err := os.Stat(p); err != nil {
			return Image{}, fmt.Errorf("image not built (missing %s): run `cell image build`", p)
		}
	}
	return img, nil
}

// qemuFailed is where a failed build of the recipe k.QEMU says why.
func (b *Builder) qemuFailed(k Keys) string { return b.dir("qemu", k.QEMU+".failed") }

func (b *Builder) image(k Keys) Image {
	return Image{
		Kernel: b.dir("kernel", k.Kernel, "vmlinux"),
		Disk:   b.dir("base", k.Disk, "rootfs.qcow2"),
		QEMU:   b.dir("qemu", k.QEMU, "qemu-system-x86_64"),
		Keys:   k,
	}
}

// KernelInfo says what the image's kernel was built from (for `cell doctor`).
func (img Image) KernelInfo() string {
	return "built from Debian linux-source-6.1 " + linuxSourceVersion() + " with Cell's fragment (recipe " + img.Keys.Kernel + ")"
}

// QEMUInfo says what the image's QEMU was built from (for `cell doctor`).
func (img Image) QEMUInfo() string {
	if img.QEMUFallback != "" {
		return "Debian's build: Cell's own (recipe " + img.Keys.QEMU + ") could not be built, so QEMU starts ~15 ms slower (`cell image build --force` tries again): " + img.QEMUFallback
	}
	v, err := os.ReadFile(img.QEMU + ".version")
	if err != nil {
		return "recipe " + img.Keys.QEMU
	}
	return "built static from Debian's qemu " + strings.TrimSpace(string(v)) + " source, microvm only (recipe " + img.Keys.QEMU + ")"
}

// Ensure returns the image, building whatever part is missing (or everything, with force).
func (b *Builder) Ensure(ctx context.Context, force bool) (Image, error) {
	k, err := b.Keys()
	if err != nil {
		return Image{}, err
	}
	img := b.image(k)
	if !force {
		if _, err := b.Lookup(); err == nil {
			return img, nil
		}
	}
	if err := os.MkdirAll(b.dir(), 0o755); err != nil {
		return Image{}, fmt.Errorf("creating image directory: %w", err)
	}
	unlock, err := lock(ctx, b.dir(".lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()

	kernelDir, treeDir, diskDir, qemuDir := b.dir("kernel", k.Kernel), b.dir("rootfs", k.Tree), b.dir("base", k.Disk), b.dir("qemu", k.QEMU)
	var missing []string
	if force {
		_ = os.Remove(b.qemuFailed(k))
	}
	needQEMU := force || (!exists(qemuDir) && !exists(b.qemuFailed(k)))
	needKernel := force || !exists(kernelDir)
	needTree := force || !exists(treeDir)
	needDisk := force || needTree || !exists(diskDir)
	if needKernel {
		missing = append(missing, missingPackages(kernelPackages())...)
	}
	if needTree {
		missing = append(missing, missingPackages(rootfsPackages())...)
	}
	if needDisk {
		missing = append(missing, missingPackages(diskPackages())...)
	}
	if len(missing) > 0 {
		return Image{}, fmt.Errorf("building the guest image needs these Debian packages, which are missing: %s\ninstall them with: apt-get install -y %s   (or run `make setup`)",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	if needQEMU {
		if err := b.buildQEMU(ctx, k, qemuDir); err != nil {
			if ctx.Err() != nil {
				return Image{}, fmt.Errorf("building QEMU: %w", err)
			}
			// Cell runs on Debian's QEMU too, only slower to start: a machine that cannot
			// build it (no source index, no compiler) still gets sandboxes, and says why.
			b.progress("==> building QEMU failed; Debian's QEMU stands in (`cell doctor` says why): %v", err)
			if b.Log != nil {
				b.Log.Warn("building QEMU failed; using Debian's", "err", err)
			}
			if werr := os.WriteFile(b.qemuFailed(k), []byte(err.Error()+"\n"), 0o644); werr != nil {
				return Image{}, fmt.Errorf("building QEMU: %w (and recording it: %v)", err, werr)
			}
		}
	}
	if needKernel {
		b.progress("==> building the guest kernel (recipe %s; about 5-8 minutes on 2 cores, once)", k.Kernel)
		if err := b.publish(ctx, kernelDir, func(tmp string) error {
			return b.runScript(ctx, "kernel", "kernel/build.sh", tmp,
				filepath.Join(tmp, "recipes/kernel/fragment.config"), filepath.Join(tmp, "vmlinux"), filepath.Join(tmp, "src"))
		}, func(tmp string) error { return os.RemoveAll(filepath.Join(tmp, "src")) }); err != nil {
			return Image{}, fmt.Errorf("building kernel: %w", err)
		}
	}
	if needTree {
		b.progress("==> building the base root file system (recipe %s; about 2-3 minutes, once)", k.Tree)
		if err := b.publish(ctx, treeDir, func(tmp string) error {
			return b.runScript(ctx, "rootfs", "rootfs/build.sh", tmp, filepath.Join(tmp, "tree"))
		}, nil); err != nil {
			return Image{}, fmt.Errorf("building root file system: %w", err)
		}
	}
	if needDisk {
		b.progress("==> making the base disk with envd (recipe %s)", k.Disk)
		if err := b.publish(ctx, diskDir, func(tmp string) error {
			return b.makeDisk(ctx, filepath.Join(treeDir, "tree"), filepath.Join(tmp, "rootfs.qcow2"))
		}, nil); err != nil {
			return Image{}, fmt.Errorf("making base disk: %w", err)
		}
	}
	b.progress("==> guest image ready")
	return img, nil
}

// buildQEMU builds Cell's QEMU into dir (see images/qemu/build.sh).
func (b *Builder) buildQEMU(ctx context.Context, k Keys, dir string) error {
	if missing := missingPackages(qemuPackages()); len(missing) > 0 {
		return fmt.Errorf("missing Debian packages %s (apt-get install -y %s, or run `make setup`)",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	if err := os.MkdirAll(b.dir("qemu"), 0o755); err != nil {
		return err
	}
	b.progress("==> building QEMU (recipe %s; about 3 minutes on 2 cores, once)", k.QEMU)
	return b.publish(ctx, dir, func(tmp string) error {
		return b.runScript(ctx, "qemu", "qemu/build.sh", tmp,
			filepath.Join(tmp, "recipes/qemu/devices.mak"), filepath.Join(tmp, "qemu-system-x86_64"),
			filepath.Join(tmp, "src"), filepath.Join(tmp, "recipes/qemu/acpi-stub.patch"),
			filepath.Join(tmp, "recipes/qemu/tcg-ss32.patch"), filepath.Join(tmp, "recipes/qemu/discard-private.patch"))
	}, func(tmp string) error { return os.RemoveAll(filepath.Join(tmp, "src")) })
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// publish builds into a fresh temporary directory next to final and renames it into place, so
// that final is either absent or complete. tidy, if set, runs before the rename.
func (b *Builder) publish(ctx context.Context, final string, build, tidy func(tmp string) error) error {
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return err
	}
	tmp := final + ".tmp-" + rand.Text()[:8]
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	if err := build(tmp); err != nil {
		return err
	}
	if tidy != nil {
		if err := tidy(tmp); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	old := final + ".old-" + rand.Text()[:8]
	if exists(final) {
		if err := os.Rename(final, old); err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(old) }()
	}
	return os.Rename(tmp, final)
}

// runScript writes an embedded recipe script (and the kernel fragment) into dir and runs it,
// relaying its "step:" lines as progress and keeping the rest in a log file.
func (b *Builder) runScript(ctx context.Context, label, script, dir string, args ...string) error {
	if err := fs.WalkDir(images.Recipes, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := images.Recipes.ReadFile(p)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, "recipes", p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o755)
	}); err != nil {
		return fmt.Errorf("writing recipes: %w", err)
	}
	logPath := filepath.Join(b.dir(), label+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(dir, "recipes", script)}, args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.Stderr = logf
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	start := time.Now()
	relay := make(chan struct{})
	go func() {
		defer close(relay)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if step, ok := strings.CutPrefix(line, "step: "); ok {
				b.progress("    [%s %5.0fs] %s", label, time.Since(start).Seconds(), step)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err = cmd.Run()
	_ = pw.Close()
	<-relay
	if err != nil {
		return fmt.Errorf("%s recipe failed after %v: %w; last lines of %s:\n%s", label,
			time.Since(start).Round(time.Second), err, logPath, tailFile(logPath, 15))
	}
	return nil
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// makeDisk installs envd as init into tree and turns the tree into a qcow2 disk.
func (b *Builder) makeDisk(ctx context.Context, tree, out string) error {
	envd, err := os.ReadFile(b.Envd)
	if err != nil {
		return err
	}
	dst := filepath.Join(tree, "usr/bin/envd")
	if err := os.WriteFile(dst+".new", envd, 0o755); err != nil {
		return err
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		return err
	}
	return MakeDisk(ctx, tree, out, DiskSizeBytes)
}

// lock takes an exclusive flock on path, waiting (and honouring ctx) while another build holds it.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening image lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); _ = f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for another image build: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Prune removes what earlier recipes built under Home/images (each new kernel, root file
// system, QEMU or envd left a directory behind for good, ~330 MB for each base disk): every
// kernel, root file system tree and QEMU build but the current one, leftovers of interrupted
// builds, and every base disk but the current one that inUse does not claim (a template's or a
// sandbox's disk may be an overlay on it). It holds the build lock, and returns what it removed.
func (b *Builder) Prune(ctx context.Context, inUse func(baseDisk string) bool) ([]string, error) {
	k, err := b.Keys()
	if err != nil {
		return nil, err
	}
	if !exists(b.dir()) {
		return nil, nil
	}
	unlock, err := lock(ctx, b.dir(".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	var removed []string
	var errs []error
	for _, kind := range []struct{ dir, keep string }{
		{"kernel", k.Kernel}, {"rootfs", k.Tree}, {"qemu", k.QEMU}, {"base", k.Disk},
	} {
		des, err := os.ReadDir(b.dir(kind.dir))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, de := range des {
			p := b.dir(kind.dir, de.Name())
			if kind.dir == "qemu" && !de.IsDir() && strings.HasSuffix(de.Name(), ".failed") && de.Name() != kind.keep+".failed" {
				// An earlier recipe's failed build: nothing uses its note.
				if err := os.Remove(p); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			if !de.IsDir() || de.Name() == kind.keep ||
				(kind.dir == "base" && inUse(filepath.Join(p, "rootfs.qcow2"))) {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, p)
		}
	}
	return removed, errors.Join(errs...)
}
