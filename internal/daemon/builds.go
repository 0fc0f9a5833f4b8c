package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/ociimage"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/templates"
	"github.com/cellhq/cell/internal/vmm"
)

// snapshots tells the template service about the runtime's snapshots.
type snapshots struct {
	rt     *sandbox.Runtime
	home   string
	runDir string
}

func (s snapshots) Base() (name, ident string, err error) {
	t := s.rt.Template("base")
	if t == nil {
		return "", "", fmt.Errorf("no base template snapshot: templates cannot be built without one")
	}
	return "base", t.Dir, nil
}

// InUse lists the sandboxes, running or paused, whose disk goes through the snapshot's: other
// layers and templates built on it do not count (they are the build cache's).
func (s snapshots) InUse(name string) []string {
	t := s.rt.Template(name)
	if t == nil {
		return nil
	}
	var out []string
	for _, u := range sandbox.DiskUsers(s.home, s.runDir, datadir.Layout{Home: s.home}.Paused(), filepath.Join(t.Dir, vmm.DiskFile)) {
		if !strings.HasPrefix(u, "template ") {
			out = append(out, u)
		}
	}
	return out
}

func (s snapshots) Layers() []templates.Layer {
	var out []templates.Layer
	for _, l := range (sandbox.BuildMachines{Runtime: s.rt, Home: s.home}).Layers() {
		out = append(out, templates.Layer{Name: l.Name, Bytes: l.Bytes, Used: l.Used})
	}
	return out
}

func (s snapshots) RemoveLayer(name string) error {
	return sandbox.BuildMachines{Runtime: s.rt, Home: s.home}.RemoveLayer(name, s.runDir, datadir.Layout{Home: s.home}.Paused())
}

func (s snapshots) DiskMiB(name string) int {
	if t := s.rt.Template(name); t != nil {
		return int(t.DiskBytes / vmm.MiB)
	}
	return 0
}

// startTemplates starts the template service over the daemon's store and runtime, and marks
// the builds an earlier daemon left unfinished as failed.
func (d *Daemon) startTemplates(ctx context.Context) (*templates.Service, error) {
	layout := datadir.Layout{Home: d.cfg.Home}
	if err := os.MkdirAll(layout.Builds(), 0o700); err != nil {
		return nil, err
	}
	key, err := templates.UploadKey(filepath.Join(layout.Builds(), "upload.key"))
	if err != nil {
		return nil, fmt.Errorf("the upload key: %w", err)
	}
	// A build's registry is a user's choice: the host never reaches its private networks for
	// one, except where the operator exempts them (--net-allow-reserved) or names a mirror.
	puller, err := ociimage.NewPuller(d.cfg.RegistryMirrors, &netstack.Guard{Exempt: d.cfg.NetExempt})
	if err != nil {
		return nil, err
	}
	machines := sandbox.BuildMachines{Runtime: d.rt, Home: d.cfg.Home}
	svc, err := templates.New(templates.Config{Store: d.st, Machines: machines,
		Images:    &templates.Images{Puller: puller, Machines: machines, Envd: d.cfg.Envd},
		Snapshots: snapshots{rt: d.rt, home: d.cfg.Home, runDir: d.rt.Host.RunDir()}, Dir: layout.Builds(), Key: key, Log: d.log,
		CacheBytes: d.cfg.TemplateCacheBytes, Disk: d.rt.Host.DiskGuard()})
	if err != nil {
		return nil, err
	}
	if err := svc.Recover(ctx); err != nil {
		svc.Close()
		return nil, err
	}
	return svc, nil
}

// Templates is the daemon's template service, for callers that build in process (`cell
// template build` without a cell serve).
func (d *Daemon) Templates() *templates.Service { return d.tpl }
