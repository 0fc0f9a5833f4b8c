package vmm

import (
	"context"
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
// Only overlays that name their backing file by its absolute path are kept: a layer named
// relatively (a resumed VM's) is a VM's own, and would only push the templates' out.
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
func (o *overlays) create(ctx context.Context, qemuImg, base, ref, path string) error {
	st, err := os.Stat(base)
	if err != nil {
		return err
	}
	key := overlayKey{path: base, size: st.Size(), mtime: st.ModTime()}
	keep := ref == base && filepath.IsAbs(base)
	o.mu.Lock()
	b, ok := o.files[key]
	o.mu.Unlock()
	if !ok || !keep {
		out, err := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", ref, path).CombinedOutput()
		if err != nil {
			return fmt.Errorf("creating disk overlay: %w: %s", err, strings.TrimSpace(string(out)))
		}
		if !keep {
			return nil
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
