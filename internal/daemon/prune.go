package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
)

// PruneImages removes what earlier recipes built in cfg's image cache (sandbox.PruneImages),
// when the cache is the data directory's own: one shared with other data directories may hold
// base disks they depend on. Disks that VMs in cfg's run directory or paused sandboxes use are
// kept. The caller holds the data directory's lock: Start does, `cell image build` takes it for
// the moment. What it removed is logged, and listed on progress when set.
func PruneImages(ctx context.Context, cfg Config, progress io.Writer) {
	cfg = cfg.withDefaults()
	if cfg.ImageHome != cfg.Home {
		return
	}
	runDir := cfg.RunDir
	if runDir == "" {
		var err error
		if runDir, err = sandbox.RunDir(cfg.Home); err != nil {
			return
		}
	}
	b := &image.Builder{Home: cfg.ImageHome, Envd: cfg.Envd, Log: cfg.Log}
	removed, err := sandbox.PruneImages(ctx, b, cfg.Home, runDir, datadir.Layout{Home: cfg.Home}.Paused())
	for _, p := range removed {
		cfg.Log.Info("removed an outdated image artifact", "dir", p)
		if progress != nil {
			fmt.Fprintf(progress, "==> removed %s (an earlier recipe's)\n", p)
		}
	}
	if err != nil {
		cfg.Log.Warn("removing outdated image artifacts", "err", err)
	}
}

// warnUnreachable logs the --dns-host names whose address sandboxes cannot reach: a name the
// operator pins to a private address still needs that address in --net-allow-reserved.
func warnUnreachable(log *slog.Logger, hosts map[string]netip.Addr, exempt []netip.Prefix) {
	g := &netstack.Guard{Exempt: exempt}
	for name, a := range hosts {
		if why, blocked := g.Blocked(a); blocked {
			log.Warn("sandboxes resolve a --dns-host name to an address they cannot reach (add it to --net-allow-reserved to open it)",
				"name", name, "addr", a.String(), "reason", why)
		}
	}
}
