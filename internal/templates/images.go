package templates

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/ociimage"
)

// ImageMachines boots build VMs on an image's disk (sandbox.BuildMachines).
type ImageMachines interface {
	// Boot cold-boots a VM on the root file system disk.
	Boot(ctx context.Context, disk string, cpus, memoryMiB int) (build.VM, error)
	// ImageDisk is where the disk of the layer name goes (removed with the layer).
	ImageDisk(layer string) string
}

// Images builds from OCI images (fromImage other than Cell's base image).
type Images struct {
	Puller   *ociimage.Puller
	Machines ImageMachines
	// Envd is the envd binary each image gets as its init.
	Envd   string
	Limits ociimage.Limits // zero: ociimage.DefaultLimits
}

// imageRef is a build's OCI base, checked when the build starts.
type imageRef struct {
	ref   string
	creds *ociimage.Credentials
}

// checkImage checks spec's image reference and credentials (nil when it builds on Cell's base
// image or a template).
func (s *Service) checkImage(spec build.Spec) (*imageRef, error) {
	if spec.FromImage != "" && spec.FromTemplate != "" {
		return nil, fmt.Errorf("%w: fromImage and fromTemplate: give one", manager.ErrInvalid)
	}
	if spec.FromImage == "" || build.IsBaseImage(spec.FromImage) {
		return nil, nil
	}
	if s.cfg.Images == nil {
		return nil, fmt.Errorf("%w: fromImage %q: this server does not pull images", manager.ErrInvalid, spec.FromImage)
	}
	if _, err := ociimage.ParseReference(spec.FromImage); err != nil {
		return nil, fmt.Errorf("%w: %w", manager.ErrInvalid, err)
	}
	creds, err := ociimage.ParseCredentials(spec.Registry)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", manager.ErrInvalid, err)
	}
	return &imageRef{ref: spec.FromImage, creds: creds}, nil
}

// imageBase returns the layer of image ref booted as a guest, for team's builds of cpus and
// memoryMiB: found in the cache by the image's digest, or pulled, unpacked, provisioned, booted
// and saved. A team's image layers are its own: a team that cannot pull an image never gets it
// from another's cache.
func (s *Service) imageBase(ctx context.Context, team string, im imageRef, cpus, memoryMiB int, log build.Logger) (_ string, _ build.State, _ string, err error) {
	cfg := s.cfg.Images
	t0 := time.Now()
	img, err := cfg.Puller.Resolve(ctx, im.ref, im.creds)
	if err != nil {
		return "", build.State{}, "", err
	}
	key := build.BaseKey(team, "oci:"+img.Digest, cpus, memoryMiB)
	name := build.LayerName(key)
	if st, ok := build.CachedLayer(s.cfg.Machines, name); ok {
		log(build.LevelInfo, "base", fmt.Sprintf("CACHED %s (%s)", im.ref, img.Digest))
		return name, st, key, nil
	}
	if l, ok := s.cfg.Machines.(build.Locker); ok {
		unlock, err := l.Lock(ctx, name)
		if err != nil {
			return "", build.State{}, "", err
		}
		defer unlock()
		if st, ok := build.CachedLayer(s.cfg.Machines, name); ok { // made while we waited
			log(build.LevelInfo, "base", fmt.Sprintf("CACHED %s (%s)", im.ref, img.Digest))
			return name, st, key, nil
		}
	}
	log(build.LevelInfo, "base", fmt.Sprintf("pulling %s from %s (%s, %.1f MB compressed)", im.ref, img.Source, img.Digest, float64(img.Bytes)/1e6))
	disk := cfg.Machines.ImageDisk(name)
	// Until its layer is saved nothing stands on the disk: a failed attempt removes it, and
	// what a crashed one left is swept (this process holds the layer's lock).
	defer func() {
		if err != nil {
			_ = os.Remove(disk)
			_ = os.Remove(filepath.Dir(disk)) // when nothing else is in it
		}
	}()
	stale, _ := filepath.Glob(disk + ".tmp-*")
	for _, p := range stale {
		_ = os.RemoveAll(p)
	}
	if _, err := os.Stat(disk); err != nil {
		if err := s.makeImageDisk(ctx, img, disk, log); err != nil {
			return "", build.State{}, "", err
		}
	}
	t1 := time.Now()
	vm, err := cfg.Machines.Boot(ctx, disk, cpus, memoryMiB)
	if err != nil {
		return "", build.State{}, "", fmt.Errorf("booting %s: %w", im.ref, err)
	}
	log(build.LevelInfo, "base", fmt.Sprintf("booted in %s", time.Since(t1).Round(time.Millisecond)))
	defer func() { _ = vm.Close() }()
	st := imageState(img.Config)
	meta, err := build.EncodeLayer(st)
	if err != nil {
		return "", build.State{}, "", err
	}
	saved, err := s.cfg.Machines.Save(ctx, vm, name, team, meta)
	if err != nil {
		return "", build.State{}, "", fmt.Errorf("saving %s's layer: %w", im.ref, err)
	}
	log(build.LevelInfo, "base", fmt.Sprintf("%s's layer saved, %s after the pull began", im.ref, time.Since(t0).Round(time.Millisecond)))
	return saved, st, key, nil
}

// makeImageDisk pulls img into a tree beside disk, provisions it and makes disk of it,
// published by a rename: disk is whole or absent.
func (s *Service) makeImageDisk(ctx context.Context, img *ociimage.Image, disk string, log build.Logger) error {
	cfg := s.cfg.Images
	lim := cfg.Limits
	if lim.Bytes == 0 {
		lim = ociimage.DefaultLimits
	}
	if s.cfg.Disk != nil {
		// The layers unpacked, the disk made of them, and room to spare: about 3x compressed
		// first; then, as it unpacks (a small layer may hold much), room for what is written
		// so far once more (mkfs copies the tree) and another check's worth.
		if err := s.cfg.Disk.Admit(uint64(img.Bytes)*3, "an image's root file system"); err != nil {
			return err
		}
		lim.Room = func(written int64) error {
			return s.cfg.Disk.Admit(uint64(written)+ociimage.CheckEvery, "an image's root file system")
		}
	}
	if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
		return err
	}
	tmp := disk + ".tmp-" + rand.Text()[:8]
	tree := tmp + ".tree"
	defer func() {
		_ = os.RemoveAll(tree)
		_ = os.Remove(tmp)
	}()
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	st, err := ociimage.Unpack(ctx, img, tree, lim)
	if err != nil {
		if errors.Is(err, ociimage.ErrTooLarge) {
			return fmt.Errorf("%w: %w", manager.ErrInvalid, err)
		}
		return err
	}
	msg := fmt.Sprintf("unpacked %d files, %.1f MB, in %s", st.Entries, float64(st.Bytes)/1e6, time.Since(t0).Round(time.Millisecond))
	if st.Skipped > 0 {
		msg += fmt.Sprintf(" (%d device nodes and FIFOs left out)", st.Skipped)
	}
	log(build.LevelInfo, "base", msg)
	envd, err := os.ReadFile(cfg.Envd)
	if err != nil {
		return fmt.Errorf("envd: %w", err)
	}
	if _, err := image.Provision(tree, envd); err != nil {
		return err
	}
	t1, size := time.Now(), diskSize(st)
	if err := image.MakeDisk(ctx, tree, tmp, size); err != nil {
		return fmt.Errorf("making %s's disk: %w", img.Ref, err)
	}
	log(build.LevelInfo, "base", fmt.Sprintf("provisioned it and made a %d MiB disk of it in %s", size>>20, time.Since(t1).Round(time.Millisecond)))
	if err := syncPath(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, disk); err != nil {
		return err
	}
	return syncPath(filepath.Dir(disk))
}

// diskSize is the file system an unpacked image gets (sparse): its files with room to spare,
// enough inodes for its entries (ext4 makes one per 16 KiB), at least the base image's.
func diskSize(st ociimage.Stats) int64 {
	size := st.Bytes + st.Bytes/4 + 1<<30
	size = max(size, int64(st.Entries)*32<<10, image.DiskSizeBytes)
	return (size + 1<<20 - 1) &^ (1<<20 - 1)
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// imageState is what sandboxes of an image start in: E2B's user `user`, the image's working
// directory (its home when the image sets none) and the image's environment.
func imageState(c v1.Config) build.State {
	st := build.State{User: image.GuestUser, Workdir: c.WorkingDir}
	if st.Workdir == "" {
		st.Workdir = "/home/" + image.GuestUser
	}
	for _, kv := range c.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			if st.Env == nil {
				st.Env = map[string]string{}
			}
			st.Env[k] = v
		}
	}
	return st
}
