package datadir

import "path/filepath"

// Layout names every path of the data directory Home. The tree:
//
//	Home/
//	├── daemon.lock                 the daemon's lock (Acquire)
//	├── cell.db                     the store: sandboxes, their states and owners
//	├── accel.json                  the accelerator found to work (KVM or TCG), with what it was found on
//	├── images/                     the guest image cache (kernel, disk, QEMU builds)
//	├── run/                        VM working directories (RunDir may put them elsewhere
//	│   ├── <id>/                   when these socket paths would be too long)
//	│   └── .gone-<id>-<random>/    a released VM's directory, being removed
//	├── paused/
//	│   └── <id>/                   one paused sandbox
//	│       ├── g<N>/               a saved generation: meta.json (last), state, mem, disk.qcow2
//	│       ├── .staging-<random>/  a pause being written
//	│       └── current             names the newest generation, for people
//	├── templates/
//	│   ├── base/
//	│   │   ├── .lock               serializes builds
//	│   │   ├── <fingerprint>/      the base template for one QEMU, kernel, image and machine
//	│   │   └── .staging-<random>/  a build being written
//	│   └── <name>/
//	│       ├── snap/               a snapshot of a running sandbox, or a template build's layer
//	│       ├── image.qcow2         an OCI image's root file system, below the layer that booted it
//	│       └── .staging-<random>/  a snapshot being written
//	└── builds/                     template builds (package templates)
//	    ├── upload.key              signs upload URLs
//	    ├── uploads/<team>/<hash>   the files of COPY steps, as uploaded (a tar, gzipped or not)
//	    └── logs/<build>.jsonl      a finished build's log
//
// Every saved VM directory (a generation, a template, a snapshot) holds meta.json, its device
// state and RAM (state, mem) and its disk (disk.qcow2 and the layers below it); it is written in
// a staging directory next to where it goes and published by a rename once complete.
type Layout struct {
	Home string
}

// Staging starts the name of a saved VM directory still being written, next to where it goes.
const Staging = ".staging-"

// Lock is the daemon's lock file (see Acquire).
func (l Layout) Lock() string { return filepath.Join(l.Home, LockFile) }

// DB is the store's database.
func (l Layout) DB() string { return filepath.Join(l.Home, "cell.db") }

// Accel is where the accelerator probe's result is kept.
func (l Layout) Accel() string { return filepath.Join(l.Home, "accel.json") }

// Images is the guest image cache.
func (l Layout) Images() string { return filepath.Join(l.Home, "images") }

// Run is where VM working directories go by default.
func (l Layout) Run() string { return filepath.Join(l.Home, "run") }

// Paused holds the paused sandboxes.
func (l Layout) Paused() string { return filepath.Join(l.Home, "paused") }

// PausedSandbox holds the saved generations of paused sandbox id.
func (l Layout) PausedSandbox(id string) string { return filepath.Join(l.Paused(), id) }

// Templates holds the templates and snapshots.
func (l Layout) Templates() string { return filepath.Join(l.Home, "templates") }

// Template holds the saved VMs of template name: the base template's builds, or a snapshot.
func (l Layout) Template(name string) string { return filepath.Join(l.Templates(), name) }

// TemplateBuild is the base template name built for the machine whose fingerprint is fp.
func (l Layout) TemplateBuild(name, fp string) string {
	return filepath.Join(l.Template(name), fp[:16])
}

// TemplateLock serializes builds of template name.
func (l Layout) TemplateLock(name string) string { return filepath.Join(l.Template(name), ".lock") }

// Snapshot is the saved VM of snapshot name.
func (l Layout) Snapshot(name string) string { return filepath.Join(l.Template(name), "snap") }

// ImageDisk is the root file system an OCI image was unpacked into (qcow2), beside the build
// layer name that boots it.
func (l Layout) ImageDisk(name string) string { return filepath.Join(l.Template(name), "image.qcow2") }

// Builds holds what template builds keep besides their layers: uploads and logs.
func (l Layout) Builds() string { return filepath.Join(l.Home, "builds") }
