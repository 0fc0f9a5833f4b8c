package vmm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Disks are qcow2 chains taken by reference. A VM's working directory holds its disk as layers
// named layer-<16 hex>.qcow2, each naming the one below it by that relative name, down to a
// layer outside the directory (a template's disk, named by its absolute path). The top layer,
// the one QEMU writes, has a second name: DiskFile. A layer below the top is never written
// again, so a paused generation, a snapshot or a resumed VM takes a disk by linking its layers
// (hard links, no copy) into its own directory under the same names:
//
//	run/<id>/disk.qcow2 = layer-c.qcow2 ──> layer-b.qcow2 ──> layer-a.qcow2 ──> /…/templates/base/…/disk.qcow2
//
// QEMU opens only layer names, never DiskFile: when a layer stops being the top (a snapshot of
// the running VM), QEMU reopens it read-only by the name it opened it with, and DiskFile names
// the new top by then. Layers a chain no longer needs (after a background flatten, see
// flattenDeep) are removed; the directory's removal takes the rest.

// DiskFile is the name of the top layer of a VM's disk in its working directory, and of a saved
// disk in a paused generation or a snapshot.
const DiskFile = "disk.qcow2"

// maxLocalLayers is the depth of a VM's local chain above which it is flattened in the
// background: each resume and each snapshot of the running VM adds a layer.
const maxLocalLayers = 4

// maxChain bounds a chain's walk (a loop in headers is an error, not a hang).
const maxChain = 256

var layerName = regexp.MustCompile(`^layer-[0-9a-f]{16}\.qcow2$`)

// newLayerName names a new layer.
func newLayerName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "layer-" + hex.EncodeToString(b[:]) + ".qcow2"
}

// backingFile reads the backing file name from a qcow2 header ("" for none).
func backingFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	var h [20]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return "", fmt.Errorf("%s: reading the qcow2 header: %w", path, err)
	}
	if string(h[:4]) != "QFI\xfb" {
		return "", fmt.Errorf("%s: not a qcow2 file", path)
	}
	off, size := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint32(h[16:20])
	if off == 0 || size == 0 {
		return "", nil
	}
	if size > 1023 || off > 1<<20 {
		return "", fmt.Errorf("%s: backing file name of %d bytes at %d", path, size, off)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("%s: reading the backing file name: %w", path, err)
	}
	return string(name), nil
}

// walkChain follows the qcow2 chain below top: visit gets each backing file as the header above
// it names it (ref) and its path (a relative name resolved against the directory of the file
// that names it), and says whether to go on. A chain of more than maxChain layers below top is
// an error (headers that loop), not a hang.
func walkChain(top string, visit func(ref, path string) (bool, error)) error {
	for cur, n := top, 0; ; n++ {
		ref, err := backingFile(cur)
		if err != nil || ref == "" {
			return err
		}
		if n == maxChain {
			return fmt.Errorf("%s: a chain of more than %d layers", top, maxChain)
		}
		path := ref
		if !filepath.IsAbs(ref) {
			path = filepath.Join(filepath.Dir(cur), ref)
		}
		if more, err := visit(ref, path); err != nil || !more {
			return err
		}
		cur = path
	}
}

// Chain returns the files of the qcow2 chain whose top is top, top first (as far as it resolves,
// also with an error). A missing layer is an error wrapping os.ErrNotExist.
func Chain(top string) ([]string, error) {
	chain := []string{top}
	err := walkChain(top, func(_, path string) (bool, error) {
		if _, err := os.Stat(path); err != nil {
			return false, fmt.Errorf("%s: layer %s: %w", top, path, err)
		}
		chain = append(chain, path)
		return true, nil
	})
	return chain, err
}

// localLayers returns the names of the layers below top that are in top's directory, top's
// backing first, and how the lowest of them names the layer below it, which is elsewhere
// (absolute; "" when the chain ends in the directory). A relative name that is not a layer's is
// refused.
func localLayers(top string) (names []string, below string, err error) {
	err = walkChain(top, func(ref, _ string) (bool, error) {
		if filepath.IsAbs(ref) {
			below = ref
			return false, nil
		}
		if !layerName.MatchString(ref) {
			return false, fmt.Errorf("%s: unexpected backing file name %q", top, ref)
		}
		names = append(names, ref)
		return true, nil
	})
	if err != nil {
		return nil, "", err
	}
	return names, below, nil
}

// LinkLayers links the layers below top that are in top's directory into dir under their names
// (a name already there must be the same file). With top itself, a disk can then be moved or
// linked into dir and keep its chain.
func LinkLayers(top, dir string) error {
	names, _, err := localLayers(top)
	if err != nil {
		return err
	}
	src := filepath.Dir(top)
	for _, n := range names {
		if err := linkSame(filepath.Join(src, n), filepath.Join(dir, n)); err != nil {
			return fmt.Errorf("linking disk layer %s: %w", n, err)
		}
	}
	return nil
}

// linkSame links old to new, which may exist already as the same file.
func linkSame(old, new string) error {
	err := os.Link(old, new)
	if errors.Is(err, os.ErrExist) {
		a, aerr := os.Stat(old)
		b, berr := os.Stat(new)
		if aerr == nil && berr == nil && os.SameFile(a, b) {
			return nil
		}
	}
	return err
}

// SyncChain syncs top and the layers below it in its directory (a layer synced before costs a
// system call).
func SyncChain(top string) error {
	names, _, err := localLayers(top)
	if err != nil {
		return err
	}
	paths := []string{top}
	for _, n := range names {
		paths = append(paths, filepath.Join(filepath.Dir(top), n))
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("syncing %s: %w", p, err)
		}
	}
	return nil
}

// StartWriteback starts writing the host's dirty pages of the VM's disk back to storage, without
// waiting: a pause or snapshot that syncs the disk soon after finds less to wait for.
func (vm *VM) StartWriteback() {
	f, err := os.Open(vm.dir.File(DiskFile))
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// takeChain gives a VM working directory dir the disk top (and its local layers) by reference:
// top becomes a read-only layer of dir under a new name, and the VM's disk an empty overlay on
// it. It returns the name of the overlay, which QEMU opens.
func (h *Host) takeChain(ctx context.Context, top, dir string) (string, error) {
	if err := LinkLayers(top, dir); err != nil {
		return "", err
	}
	below := newLayerName()
	if err := os.Link(top, filepath.Join(dir, below)); err != nil {
		return "", fmt.Errorf("linking the disk: %w", err)
	}
	return h.newTop(ctx, dir, filepath.Join(dir, below), below)
}

// newTop creates a new empty top layer in dir on the layer at path (named ref in the header:
// relative when it is in dir), and names it DiskFile too. It returns the layer's name.
func (h *Host) newTop(ctx context.Context, dir, path, ref string) (string, error) {
	name := newLayerName()
	if err := h.overlays.create(ctx, h.cfg.QEMUImg, h.cfg.OverlayOptions, path, ref, filepath.Join(dir, name)); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, ".disk.tmp")
	_ = os.Remove(tmp)
	if err := os.Link(filepath.Join(dir, name), tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, filepath.Join(dir, DiskFile)); err != nil {
		return "", err
	}
	return name, nil
}

// blockNode is the part of QEMU's query-block answer that names the disk's top node.
type blockNode struct {
	Device   string `json:"device"`
	Inserted *struct {
		NodeName string `json:"node-name"`
	} `json:"inserted"`
}

// activeNode returns the node name of the disk's top layer in QEMU. (Its file name is no
// guide: QEMU reports a node opened without its backing as a JSON description.)
func (vm *VM) activeNode(ctx context.Context) (string, error) {
	var blocks []blockNode
	if err := vm.qmp.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return "", fmt.Errorf("querying the disk: %w", err)
	}
	for _, b := range blocks {
		if b.Device == "d0" && b.Inserted != nil {
			return b.Inserted.NodeName, nil
		}
	}
	return "", errors.New("the VM has no disk d0")
}

// topLayer returns the layer name of the top of the disk in VM directory dir: the layer that is
// DiskFile, or "" when DiskFile has no layer name (a VM started by an older Cell, whose QEMU
// opened DiskFile itself). Should a crash have come between a snapshot's renaming of DiskFile
// and QEMU's switch to it, the top is the new layer, which is empty: it reads as the disk QEMU
// still writes to, and the chain through it is as good.
func topLayer(dir string) (string, error) {
	top, err := os.Stat(filepath.Join(dir, DiskFile))
	if err != nil {
		return "", err
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, de := range des {
		if !layerName.MatchString(de.Name()) {
			continue
		}
		if st, err := os.Stat(filepath.Join(dir, de.Name())); err == nil && os.SameFile(st, top) {
			return de.Name(), nil
		}
	}
	return "", nil
}

// TakeDisk puts the VM's disk as it is now into dir (as DiskFile and its local layers) without
// copying it: the top layer becomes read-only, shared by dir and the VM, and the VM goes on
// writing to a new empty layer on it. The VM must be stopped (its disk flushed). A VM whose
// QEMU opened its disk as DiskFile (started by an older Cell) gets a copy instead.
func (vm *VM) TakeDisk(ctx context.Context, dir string) error {
	if err := vm.takeDisk(ctx, dir); err != nil {
		return err
	}
	vm.maintainDisk()
	return nil
}

func (vm *VM) takeDisk(ctx context.Context, dir string) error {
	vm.diskMu.Lock()
	defer vm.diskMu.Unlock()
	if err := vm.cancelDiskJobs(ctx); err != nil {
		return err
	}
	node, err := vm.activeNode(ctx)
	if err != nil {
		return err
	}
	name, err := topLayer(vm.dir.Path)
	if err != nil {
		return err
	}
	if name == "" {
		return CopyFile(vm.dir.File(DiskFile), filepath.Join(dir, DiskFile))
	}
	file := vm.dir.File(name)
	if err := LinkLayers(file, dir); err != nil {
		return err
	}
	if err := os.Link(file, filepath.Join(dir, DiskFile)); err != nil {
		return fmt.Errorf("linking the disk: %w", err)
	}
	// DiskFile names the new top before QEMU writes to it: until the switch below, it is an
	// empty layer on the old top, so it reads as the disk QEMU has whatever happens in between.
	top, err := vm.host.newTop(ctx, vm.dir.Path, file, name)
	if err != nil {
		return err
	}
	newNode := "n" + strings.TrimSuffix(strings.TrimPrefix(top, "layer-"), ".qcow2")
	add := map[string]any{"driver": "qcow2", "node-name": newNode, "backing": nil,
		"file":    map[string]any{"driver": "file", "filename": vm.dir.File(top)},
		"discard": "unmap", "detect-zeroes": "unmap", "cache": map[string]any{"direct": false, "no-flush": true}}
	if err := vm.qmp.Execute(ctx, "blockdev-add", add, nil); err != nil {
		return fmt.Errorf("opening the new disk layer: %w", err)
	}
	if err := vm.qmp.Execute(ctx, "blockdev-snapshot", map[string]any{"node": node, "overlay": newNode}, nil); err != nil {
		_ = vm.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": newNode}, nil)
		return fmt.Errorf("switching to the new disk layer: %w", err)
	}
	return nil
}

// blockJob is the part of QEMU's query-block-jobs answer used here.
type blockJob struct {
	Device string `json:"device"`
	Type   string `json:"type"`
}

// flattenJob is the id of the background flatten of a VM's disk.
const flattenJob = "flatten"

// cancelDiskJobs cancels the VM's background disk jobs (a flatten) and waits until QEMU has
// finished with them: a job writes to the top layer even while the VM is stopped. A cancelled
// flatten leaves the chain as it was.
func (vm *VM) cancelDiskJobs(ctx context.Context) error {
	for cancelled := false; ; {
		var jobs []blockJob
		if err := vm.qmp.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
			return fmt.Errorf("querying disk jobs: %w", err)
		}
		if len(jobs) == 0 {
			return nil
		}
		if !cancelled {
			for _, j := range jobs {
				_ = vm.qmp.Execute(ctx, "block-job-cancel", map[string]any{"device": j.Device, "force": true}, nil)
			}
			cancelled = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for disk jobs to end: %w", context.Cause(ctx))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// namedNode is the part of QEMU's query-named-block-nodes answer used here.
type namedNode struct {
	NodeName string `json:"node-name"`
	Driver   string `json:"drv"`
	File     string `json:"file"`
}

// flattenDeep starts merging the VM's local layers into its top layer in the background when
// there are more than maxLocalLayers of them (QEMU's block-stream: the guest runs on, reading
// through the chain until the job is done), and removes the merged layers once it is. The job
// is QEMU's: a pause or snapshot cancels it (cancelDiskJobs), and a crash of this process leaves
// it to finish or not, the chain valid either way.
func (vm *VM) flattenDeep(ctx context.Context) error {
	vm.diskMu.Lock()
	defer vm.diskMu.Unlock()
	top := vm.dir.File(DiskFile)
	names, bottom, err := localLayers(top)
	if err != nil || len(names) <= maxLocalLayers {
		return err
	}
	if bottom == "" {
		return errors.New("the disk's chain has no layer outside the VM's directory to flatten down to")
	}
	var nodes []namedNode
	if err := vm.qmp.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return fmt.Errorf("querying disk nodes: %w", err)
	}
	base := ""
	for _, n := range nodes {
		if n.Driver == "qcow2" && n.File == bottom {
			base = n.NodeName
		}
	}
	node, err := vm.activeNode(ctx)
	if err != nil {
		return err
	}
	args := map[string]any{"job-id": flattenJob, "device": node, "backing-file": bottom}
	if base != "" {
		args["base-node"] = base
	} else {
		args["base"] = bottom
	}
	if err := vm.qmp.Execute(ctx, "block-stream", args, nil); err != nil {
		return fmt.Errorf("starting to flatten the disk: %w", err)
	}
	vm.log.Debug("flattening the disk", "layers", len(names))
	return nil
}

// pruneLayers removes the layers of the VM's working directory that its disk's chain no longer
// names (merged by a finished flatten).
func (vm *VM) pruneLayers(ctx context.Context) error {
	vm.diskMu.Lock()
	defer vm.diskMu.Unlock()
	var jobs []blockJob
	if err := vm.qmp.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil || len(jobs) > 0 {
		return err
	}
	top := vm.dir.File(DiskFile)
	names, _, err := localLayers(top)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, n := range names {
		keep[n] = true
	}
	topInfo, err := os.Stat(top)
	if err != nil {
		return err
	}
	des, err := os.ReadDir(vm.dir.Path)
	if err != nil {
		return err
	}
	for _, de := range des {
		if !layerName.MatchString(de.Name()) || keep[de.Name()] {
			continue
		}
		p := vm.dir.File(de.Name())
		if st, err := os.Stat(p); err == nil && os.SameFile(st, topInfo) {
			continue
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return nil
}

// MoveDisk moves the VM's disk into dir (DiskFile, with its local layers linked there first, so
// that a DiskFile in dir always has its whole chain) for a pause: the VM must be stopped, and
// not run again unless the disk is moved back (ReturnDisk). Background disk jobs are cancelled
// first.
func (vm *VM) MoveDisk(ctx context.Context, dir string) error {
	vm.diskMu.Lock()
	defer vm.diskMu.Unlock()
	if err := vm.cancelDiskJobs(ctx); err != nil {
		return err
	}
	if err := LinkLayers(vm.dir.File(DiskFile), dir); err != nil {
		return err
	}
	if err := os.Rename(vm.dir.File(DiskFile), filepath.Join(dir, DiskFile)); err != nil {
		return fmt.Errorf("moving the disk: %w", err)
	}
	return nil
}

// ReturnDisk moves a disk that MoveDisk took back into the VM's directory.
func (vm *VM) ReturnDisk(dir string) error {
	vm.diskMu.Lock()
	defer vm.diskMu.Unlock()
	return os.Rename(filepath.Join(dir, DiskFile), vm.dir.File(DiskFile))
}

// maintainDisk flattens the VM's disk in the background when its chain is deep (flattenDeep),
// and removes the merged layers once QEMU is done. It ends with the VM.
func (vm *VM) maintainDisk() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := vm.flattenDeep(ctx)
	cancel()
	if err != nil {
		vm.log.Warn("not flattening the disk", "err", err)
		return
	}
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-vm.exited:
				return
			case <-vm.qmp.Done():
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var jobs []blockJob
			err := vm.qmp.Execute(ctx, "query-block-jobs", nil, &jobs)
			if err == nil && len(jobs) == 0 {
				err = vm.pruneLayers(ctx)
				cancel()
				if err != nil {
					vm.log.Warn("removing merged disk layers", "err", err)
				}
				return
			}
			cancel()
		}
	}()
}
