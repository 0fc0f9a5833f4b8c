package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// overlays keeps the bytes of a fresh qcow2 overlay per backing disk: every new VM on the same
// disk gets an identical file, so qemu-img (an exec, ~10 ms) runs once per disk, not per VM.
// Keyed by the backing file's path, size and mtime, so a replaced disk gets a new overlay.
// An overlay on a layer of a VM's own (named relatively, see chain.go) differs from any other
// on a disk of the same size only in the layer's name, whose length is fixed: one is kept per
// size, and a new one is a copy with the name written over (a resume or snapshot does not wait
// for qemu-img either).
type overlays struct {
	mu    sync.Mutex
	files map[overlayKey][]byte
}

type overlayKey struct {
	path  string
	size  int64
	mtime time.Time
}

// maxOverlays bounds the cache (an overlay is ~200 KiB).
const maxOverlays = 32

// create writes a new overlay at path (which must not exist) backed by the qcow2 file base,
// which its header names ref (base itself, or a name relative to path's directory).
func (o *overlays) create(ctx context.Context, qemuImg, opts, base, ref, path string) error {
	st, err := os.Stat(base)
	if err != nil {
		return err
	}
	key := overlayKey{path: base, size: st.Size(), mtime: st.ModTime()}
	layer := layerName.MatchString(ref)
	if layer {
		size, err := DiskVirtualSize(base)
		if err != nil {
			return err
		}
		key = overlayKey{path: "layer", size: int64(size)}
	} else if ref != base || !filepath.IsAbs(base) {
		return errors.New("creating disk overlay: the backing file must be a layer or an absolute path")
	}
	o.mu.Lock()
	b, ok := o.files[key]
	o.mu.Unlock()
	if ok && layer {
		if b, ok = renameBacking(b, ref); !ok {
			return errors.New("creating disk overlay: the cached overlay has no layer name to replace")
		}
	}
	if !ok {
		args := []string{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", ref}
		if opts != "" {
			args = append(args, "-o", opts)
		}
		out, err := exec.CommandContext(ctx, qemuImg, append(args, path)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("creating disk overlay: %w: %s", err, strings.TrimSpace(string(out)))
		}
		if b, err = os.ReadFile(path); err != nil {
			return err
		}
		o.mu.Lock()
		if o.files == nil || len(o.files) >= maxOverlays {
			o.files = map[overlayKey][]byte{}
		}
		o.files[key] = b
		o.mu.Unlock()
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// renameBacking returns a copy of the qcow2 overlay b with its backing file name replaced by
// name, which must be as long (a layer name), or false if b's name is not a layer name.
func renameBacking(b []byte, name string) ([]byte, bool) {
	if len(b) < 20 {
		return nil, false
	}
	off, size := binary.BigEndian.Uint64(b[8:16]), binary.BigEndian.Uint32(b[16:20])
	if int(size) != len(name) || off > uint64(len(b)-len(name)) || !layerName.Match(b[off:off+uint64(size)]) {
		return nil, false
	}
	out := bytes.Clone(b)
	copy(out[off:], name)
	return out, true
}
