package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/sandbox"
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

// pruneImages removes what earlier recipes built in the image cache (sandbox.PruneImages), when
// the cache is the data directory's own: one shared with other data directories may hold base
// disks they depend on. What it removed is logged, and listed on progress when set.
func (g *globals) pruneImages(ctx context.Context, runDir string, progress io.Writer) {
	home, err := g.homeDir()
	if err != nil || imageHome(home) != home {
		return
	}
	b, err := g.builder(false)
	if err != nil {
		return
	}
	if runDir == "" {
		if runDir, err = sandbox.RunDir(home); err != nil {
			return
		}
	}
	log := g.logger()
	removed, err := sandbox.PruneImages(ctx, b, home, runDir, filepath.Join(home, "paused"))
	for _, p := range removed {
		log.Info("removed an outdated image artifact", "dir", p)
		if progress != nil {
			fmt.Fprintf(progress, "==> removed %s (an earlier recipe's)\n", p)
		}
	}
	if err != nil {
		log.Warn("removing outdated image artifacts", "err", err)
	}
}

type runtimeOpts struct {
	accel         vmm.Accel
	dieWithParent bool
	bootTimeout   time.Duration
	attempts      int
	detached      bool
	dnsHosts      map[string]netip.Addr
	netExempt     []netip.Prefix
	minFreeDisk   *vmm.Reserve // nil: VMs are not checked against the host's free space
}

// runtime builds the image if needed, resolves the accelerator and returns a sandbox runtime.
func (g *globals) runtime(ctx context.Context, o runtimeOpts) (*sandbox.Runtime, vmm.AccelChoice, error) {
	home, err := g.homeDir()
	if err != nil {
		return nil, vmm.AccelChoice{}, err
	}
	envd, err := g.envdPath()
	if err != nil {
		return nil, vmm.AccelChoice{}, err
	}
	return sandbox.NewRuntime(ctx, sandbox.RuntimeConfig{
		Home: home, ImageHome: imageHome(home), Envd: envd, RunDir: os.Getenv("CELL_RUN_DIR"), Accel: o.accel, MaxVMs: g.maxVMs,
		Attempts: o.attempts, BootTimeout: o.bootTimeout, DieWithParent: o.dieWithParent, Detached: o.detached,
		Build: true, Progress: os.Stderr, DNSHosts: o.dnsHosts, NetExempt: o.netExempt, MinFreeDisk: o.minFreeDisk, Log: g.logger(),
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
