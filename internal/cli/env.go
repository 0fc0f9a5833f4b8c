package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/daemon"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/templates"
	"github.com/cellhq/cell/internal/vmm"
)

// globals are the flags every command shares.
type globals struct {
	home     string
	envd     string
	logLevel string
	maxVMs   int
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// defaultHome is $CELL_HOME, else ~/.local/share/cell.
func defaultHome() string {
	if h := os.Getenv("CELL_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "cell")
	}
	return filepath.Join(os.TempDir(), "cell-"+strconv.Itoa(os.Getuid()))
}

func (g *globals) homeDir() (string, error) {
	h, err := filepath.Abs(g.home)
	if err != nil {
		return "", fmt.Errorf("data directory: %w", err)
	}
	return h, nil
}

// imageHome is $CELL_IMAGE_HOME (a data directory whose image cache to use), else home.
func imageHome(home string) string {
	if h := os.Getenv("CELL_IMAGE_HOME"); h != "" {
		if abs, err := filepath.Abs(h); err == nil {
			return abs
		}
	}
	return home
}

// envdPath is --envd, else $CELL_ENVD, else envd next to the cell binary.
func (g *globals) envdPath() (string, error) {
	if g.envd != "" {
		return filepath.Abs(g.envd)
	}
	if p := os.Getenv("CELL_ENVD"); p != "" {
		return filepath.Abs(p)
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding envd: %w", err)
	}
	p := filepath.Join(filepath.Dir(exe), "envd")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("envd binary not found next to %s (build it with `make build`, or pass --envd)", exe)
	}
	return p, nil
}

func (g *globals) builder(progress bool) (*image.Builder, error) {
	home, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	envd, err := g.envdPath()
	if err != nil {
		return nil, err
	}
	b := &image.Builder{Home: imageHome(home), Envd: envd, Log: g.logger()}
	if progress {
		b.Progress = os.Stderr
	}
	return b, nil
}

// daemonConfig is what the shared flags and the environment set of a daemon's configuration:
// the data directory, its image cache and run directory, envd, the VM limit and the log.
func (g *globals) daemonConfig() (daemon.Config, error) {
	home, err := g.homeDir()
	if err != nil {
		return daemon.Config{}, err
	}
	envd, err := g.envdPath()
	if err != nil {
		return daemon.Config{}, err
	}
	return daemon.Config{Home: home, ImageHome: imageHome(home), RunDir: os.Getenv("CELL_RUN_DIR"), Envd: envd,
		OverlayOptions: os.Getenv("CELL_QCOW2_OPTIONS"), MaxVMs: g.maxVMs, Log: g.logger(), Progress: os.Stderr}, nil
}

type runtimeOpts struct {
	accel         vmm.Accel
	dieWithParent bool
	bootTimeout   time.Duration
	attempts      int
	netExempt     []netip.Prefix
}

// runtime builds the image if needed, resolves the accelerator and returns a sandbox runtime for
// a command that runs VMs of its own (not through a daemon).
func (g *globals) runtime(ctx context.Context, o runtimeOpts) (*sandbox.Runtime, vmm.AccelChoice, error) {
	cfg, err := g.daemonConfig()
	if err != nil {
		return nil, vmm.AccelChoice{}, err
	}
	return sandbox.NewRuntime(ctx, sandbox.RuntimeConfig{
		Home: cfg.Home, ImageHome: cfg.ImageHome, Envd: cfg.Envd, RunDir: cfg.RunDir, Accel: o.accel, MaxVMs: cfg.MaxVMs,
		Attempts: o.attempts, BootTimeout: o.bootTimeout, DieWithParent: o.dieWithParent,
		Build: true, Progress: cfg.Progress, NetExempt: o.netExempt, OverlayOptions: cfg.OverlayOptions, Log: cfg.Log,
	})
}

// useTemplate makes rt restore sandboxes of template name from its memory snapshot, building the
// snapshot first when there is none for this machine.
func (g *globals) useTemplate(ctx context.Context, rt *sandbox.Runtime, name string) error {
	home, err := g.homeDir()
	if err != nil {
		return err
	}
	t, err := rt.EnsureTemplate(ctx, imageHome(home), name)
	if err != nil {
		return err
	}
	rt.SetTemplate(name, t)
	return nil
}

// builtTemplate finds the template name ([namespace/]alias[:tag]) that `cell template build`
// made in this data directory (LocalTeam's) and readies its snapshot in rt.
func (g *globals) builtTemplate(ctx context.Context, rt *sandbox.Runtime, name string) (*sandbox.Template, error) {
	home, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, datadir.Layout{Home: home}.DB())
	if err != nil {
		return nil, err
	}
	defer func() { _ = st.Close() }()
	snap, err := templates.Resolve(ctx, st, LocalTeam, name)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w (`cell template build` makes one; templates built through cell serve are its teams': `cell sandbox create --template`)", name, err)
	}
	snaps, err := rt.LoadSnapshots(home)
	if err != nil {
		return nil, err
	}
	for _, t := range snaps {
		if t.Name == snap {
			rt.SetTemplate(t.Name, t)
			return t, nil
		}
	}
	return nil, fmt.Errorf("template %s: its snapshot %s is gone or was made on another machine", name, snap)
}

// packagesTemplate builds (or finds in the layer cache) the template of the base image with
// f's packages, as LocalTeam's layers, and readies its snapshot in rt. Its build's output goes
// to stderr, a cached one says nothing.
func (g *globals) packagesTemplate(ctx context.Context, rt *sandbox.Runtime, f *runFlags) (*sandbox.Template, error) {
	spec, err := build.PackagesSpec(f.apt, f.pip, f.npm)
	if err != nil {
		return nil, err
	}
	home, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	if err := g.useTemplate(ctx, rt, "base"); err != nil {
		return nil, fmt.Errorf("the base template: %w", err)
	}
	snaps, err := rt.LoadSnapshots(home)
	if err != nil {
		return nil, err
	}
	for _, t := range snaps {
		rt.SetTemplate(t.Name, t)
	}
	base := rt.Template("base")
	job := build.Job{Team: LocalTeam, Spec: spec, Base: "base", BaseState: build.BaseState(), CPUs: base.CPUs, MemoryMiB: base.MemoryMiB,
		BaseKey: build.BaseKey(LocalTeam, base.Dir, base.CPUs, base.MemoryMiB),
		Log: func(level, step, msg string) {
			if level != build.LevelDebug && !strings.HasPrefix(msg, "CACHED") {
				fmt.Fprintf(os.Stderr, "#%s %s\n", step, printable(msg))
			}
		}}
	res, err := build.Run(ctx, sandbox.BuildMachines{Runtime: rt, Home: home}, job)
	if err != nil {
		return nil, fmt.Errorf("installing the packages: %w", err)
	}
	t := rt.Template(res.Snapshot)
	if t == nil {
		return nil, fmt.Errorf("the packages' template %s is gone", res.Snapshot)
	}
	return t, nil
}
