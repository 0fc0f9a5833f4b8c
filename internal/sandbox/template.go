package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
)

// templateMeta is a template's meta.json.
type templateMeta struct {
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"`
	MemoryMiB   int       `json:"memoryMiB"`
	CPUs        int       `json:"cpus"`
	KernelArgs  []string  `json:"kernelArgs"`
	Accel       vmm.Accel `json:"accel"`
	CreatedAt   time.Time `json:"createdAt"`
	BuildMillis int64     `json:"buildMillis"`
	// Snapshots of running sandboxes.
	Full     bool `json:"full,omitempty"`
	NamedRAM bool `json:"namedRAM,omitempty"`
	// RAMFile: a full snapshot whose RAM is in the file mem (mapped by clones), not the stream.
	RAMFile bool   `json:"ramFile,omitempty"`
	Team    string `json:"team,omitempty"`
	Source  string `json:"source,omitempty"`
	// Token is the access token the snapshot's envd enforces (its source's) until a clone's init
	// sets another: Cell's own requests to the clone carry it until then. meta.json is private to
	// the data directory's owner.
	Token string `json:"token,omitempty"`
	// Fork marks a snapshot taken for a fork: removed once no fork depends on it.
	Fork bool `json:"fork,omitempty"`
	// Label is the name a snapshot was given.
	Label string `json:"label,omitempty"`
	// Layer is a template build's own record of a layer (see Runtime.SaveLayer).
	Layer json.RawMessage `json:"layer,omitempty"`
	// Sums are the digests (package filesum) of a layer's own files, taken when it was
	// published: checked when another process adopts it (BuildMachines).
	Sums map[string]string `json:"sums,omitempty"`
}

// warmUp runs once in a template before it is saved, so that what most commands load (bash,
// its profile, python3 and node with their libraries) is in the snapshot's page cache.
const warmUp = "python3 -c pass; node -e 0; true"

// EnsureTemplate returns the memory snapshot of template name (only "base" exists), building it
// under home/templates when there is none for this exact QEMU, kernel, image and machine (their
// fingerprint names the directory, so a snapshot never meets a machine it was not made on).
// Builds are serialised by a lock file and published with a rename: readers see a whole
// template or none.
func (r *Runtime) EnsureTemplate(ctx context.Context, home, name string) (*Template, error) {
	if err := ids.Validate("template", name); err != nil {
		return nil, err
	}
	if name != "base" {
		return nil, fmt.Errorf("template %q: not found (only \"base\" exists)", name)
	}
	spec := r.baseSpec()
	fp, err := r.Host.Fingerprint(spec)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	layout := datadir.Layout{Home: home}
	parent := layout.Template(name)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	final := layout.TemplateBuild(name, fp)
	if t, err := loadTemplate(final, fp); err == nil {
		return t, nil
	}
	lock, err := os.OpenFile(layout.TemplateLock(name), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() { _ = lock.Close() }()
	if err := flock(ctx, lock); err != nil {
		return nil, fmt.Errorf("template %s: waiting for another build: %w", name, err)
	}
	if t, err := loadTemplate(final, fp); err == nil {
		return t, nil // built while we waited
	}
	t0 := time.Now()
	st, err := stage(parent)
	if err != nil {
		return nil, err
	}
	defer st.discard()
	meta := templateMeta{Name: name, Fingerprint: fp, MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Accel: r.Accel}
	if err := r.buildTemplate(ctx, st.dir, &meta); err != nil {
		return nil, fmt.Errorf("building template %s: %w", name, err)
	}
	meta.CreatedAt, meta.BuildMillis = time.Now().UTC(), time.Since(t0).Milliseconds()
	if err := st.writeMeta("meta.json", meta); err != nil {
		return nil, err
	}
	if err := st.publishAs(final); err != nil {
		return nil, fmt.Errorf("publishing template %s: %w", name, err)
	}
	// Older snapshots of this template (another QEMU, kernel or image) are kept: the disks of
	// running and paused sandboxes restored from them are overlays on their disk layers.
	r.Log.Info("template built", "template", name, "took", time.Since(t0))
	return loadTemplate(final, fp)
}

// baseSpec is the machine templates are made on; its fingerprint names what a snapshot (of the
// template or of a sandbox restored from it) may be restored into.
func (r *Runtime) baseSpec() vmm.Spec {
	return vmm.Spec{Kernel: r.Image.Kernel, BaseDisk: r.Image.Disk, MemoryMiB: DefaultMemoryMiB, CPUs: DefaultCPUs, Accel: r.Accel,
		KernelArgs: r.netArgs()}
}

// leaveWait bounds the wait for envd to let go of its session before a snapshot (see
// vmm.VM.LeaveGuest): it takes milliseconds; an envd older than the marker never says so.
const leaveWait = time.Second

func (r *Runtime) buildTemplate(ctx context.Context, dir string, meta *templateMeta) error {
	// Every clone's handshake carries an init: one here too, so that its one-time costs in envd
	// (the JSON decoder's type cache, the kernel's first reseed) are paid in the snapshot, not in
	// each create (envd's own time for an init in a clone: ~20 ms -> ~3 ms under TCG).
	sb, err := r.Boot(ctx, Options{Template: meta.Name, Cold: true, memPath: filepath.Join(dir, "mem"),
		MemoryMiB: meta.MemoryMiB, CPUs: meta.CPUs, Init: &envd.InitRequest{}})
	if err != nil {
		return err
	}
	defer func() { _ = sb.Close() }()
	for _, c := range []RunSpec{
		{Cmd: "/bin/bash", Args: []string{"-l", "-c", warmUp}, User: DefaultUser},
		{Cmd: "/bin/sync", User: "root"},
	} {
		res, err := sb.Run(ctx, c, nil, io.Discard, io.Discard, nil)
		if err != nil {
			return fmt.Errorf("warming up: %w", err)
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("warming up: %s %v exited %d", c.Cmd, c.Args, res.ExitCode)
		}
	}
	// The host side of the channel must be gone before the snapshot: a clone's envd then finds
	// its port closed and waits for its own host, instead of talking into a dead session.
	if !sb.VM.LeaveGuest(ctx, leaveWait) {
		r.Log.Warn("building a template: envd did not let go of its session; restores will be slower")
	}
	if err := sb.VM.Save(ctx, filepath.Join(dir, "state")); err != nil {
		return err
	}
	// The VM's overlay is the template's disk layer. QEMU keeps writing to the same inode
	// until it exits (below, in Close), and the guest is stopped, so it matches the RAM.
	if err := os.Rename(sb.VM.File("disk.qcow2"), filepath.Join(dir, "disk.qcow2")); err != nil {
		return err
	}
	meta.KernelArgs = r.kernelArgs(sb.ID)
	if err := sb.Close(); err != nil {
		return err
	}
	for _, f := range []string{"mem", "state", "disk.qcow2"} {
		if err := syncFile(filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	return nil
}

func loadTemplate(dir, fp string) (*Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	var m templateMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if m.Fingerprint != fp {
		return nil, fmt.Errorf("%s: made for another machine (fingerprint %.16s, want %.16s)", dir, m.Fingerprint, fp)
	}
	files := []string{"mem", "state", "disk.qcow2"}
	if m.Full && !m.RAMFile {
		files = files[1:]
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("%s: incomplete: %w", dir, err)
		}
	}
	size, err := vmm.DiskVirtualSize(filepath.Join(dir, "disk.qcow2"))
	if err != nil {
		return nil, err
	}
	t := &Template{
		Name: m.Name, Dir: dir, Disk: filepath.Join(dir, "disk.qcow2"), DiskBytes: size, MemoryMiB: m.MemoryMiB, CPUs: m.CPUs, KernelArgs: m.KernelArgs,
		Snapshot: vmm.Snapshot{MemPath: filepath.Join(dir, "mem"), StatePath: filepath.Join(dir, "state"), Full: m.Full, NamedRAM: m.NamedRAM},
		Full:     m.Full, Team: m.Team, Source: m.Source, token: m.Token, Fork: m.Fork, Label: m.Label, Layer: m.Layer, sums: m.Sums,
	}
	if m.Full && !m.RAMFile {
		t.Snapshot.MemPath = "" // RAM comes from the stream
	}
	return t, nil
}

func flock(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
