package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/cellhq/cell/internal/api"
	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/templates"
	"github.com/cellhq/cell/internal/vmm"
)

// Daemon is a started daemon: it holds its data directory and runs its sandboxes until
// Shutdown.
type Daemon struct {
	cfg Config
	log *slog.Logger

	// What Start took, in its order; release gives it back in the reverse one.
	lock    *datadir.Lock
	rt      *sandbox.Runtime
	accel   vmm.Accel
	runLock *datadir.Lock
	st      *store.Store
	mgr     *manager.Manager
	tpl     *templates.Service
	handler http.Handler

	shutdown sync.Once
	err      error // what the first Shutdown returned
}

// Start brings a daemon up over cfg.Home in the order the package's doc gives. ctx bounds the
// start-up (an image or template build, the recovery); a Start that fails releases everything it
// took, and leaves the VMs it had re-adopted running for the next daemon.
func Start(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d := &Daemon{cfg: cfg, log: cfg.Log}
	defer func() {
		if err != nil {
			if rerr := d.release(context.Background(), manager.Leave); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()
	// One daemon per data directory, before anything else: a second one would take the first
	// one's VMs for orphans and destroy them.
	if d.lock, err = datadir.Acquire(cfg.Home, cfg.Name); err != nil {
		return nil, err
	}
	warnUnreachable(d.log, cfg.DNSHosts, cfg.NetExempt)
	var choice vmm.AccelChoice
	d.rt, choice, err = sandbox.NewRuntime(ctx, sandbox.RuntimeConfig{
		Home: cfg.Home, ImageHome: cfg.ImageHome, Envd: cfg.Envd, RunDir: cfg.RunDir, AccelCache: cfg.AccelCache, Accel: cfg.Accel, MaxVMs: cfg.MaxVMs,
		Attempts: cfg.BootAttempts, DieWithParent: cfg.Attached, Detached: !cfg.Attached,
		Build: true, Progress: cfg.Progress, DNSHosts: cfg.DNSHosts, NetExempt: cfg.NetExempt, MinFreeDisk: cfg.MinFreeDisk, OverlayOptions: cfg.OverlayOptions, Log: d.log,
	})
	if err != nil {
		return nil, err
	}
	d.accel = choice.Accel
	// The run directory may be shared (CELL_RUN_DIR): one daemon in it at a time, or one would
	// take the other's VMs, left running across a restart, for orphans.
	if d.runLock, err = datadir.Acquire(d.rt.Host.RunDir(), cfg.Name); err != nil {
		return nil, err
	}
	d.log.Info("accelerator", "accel", choice.Accel, "reason", choice.Reason)
	if !cfg.Cold {
		if err := d.useBaseTemplate(ctx); err != nil {
			return nil, err
		}
	}
	if d.st, err = store.Open(ctx, datadir.Layout{Home: cfg.Home}.DB()); err != nil {
		return nil, err
	}
	d.mgr, err = manager.New(ctx, manager.Config{Runtime: manager.SandboxRuntime(d.rt), Templates: d.rt, Store: d.st, RunDir: d.rt.Host.RunDir(),
		Home: cfg.Home, DiskMiB: cfg.DiskMiB, Disk: d.rt.Host.DiskGuard(), Log: d.log})
	if err != nil {
		return nil, err
	}
	if snaps, err := d.rt.LoadSnapshots(cfg.Home); err == nil {
		for _, t := range snaps {
			d.rt.SetTemplate(t.Name, t)
		}
	}
	if err := d.mgr.Recover(ctx); err != nil {
		return nil, err
	}
	// After Recover: outdated templates are gone, so are the base disks only they used.
	PruneImages(ctx, cfg, nil)
	for name, n := range cfg.Pools {
		if d.rt.Template(name) == nil {
			d.log.Warn("no pool without a template snapshot", "template", name)
			continue
		}
		d.mgr.StartPool(name, n)
	}
	if d.tpl, err = d.startTemplates(ctx); err != nil {
		return nil, err
	}
	d.handler = api.New(api.Config{Manager: d.mgr, Templates: d.tpl, Keys: auth.Keys{Store: d.st}, Domain: cfg.Domain, Log: d.log,
		MaxStreams: cfg.MaxProxyStreams, MaxSandboxStreams: cfg.MaxSandboxStreams})
	return d, nil
}

// useBaseTemplate makes the runtime restore sandboxes from the base template's memory snapshot,
// building it first when there is none for this machine. Without one sandboxes boot cold, which
// works, only slower; unless cfg.RequireTemplate.
func (d *Daemon) useBaseTemplate(ctx context.Context) error {
	const name = "base"
	t, err := d.rt.EnsureTemplate(ctx, d.cfg.ImageHome, name)
	if err != nil {
		if d.cfg.RequireTemplate {
			return fmt.Errorf("the %s template's snapshot: %w", name, err)
		}
		d.log.Warn("no template snapshot: sandboxes will boot cold", "err", err)
		return nil
	}
	d.rt.SetTemplate(name, t)
	d.log.Info("template snapshot ready", "template", name, "dir", t.Dir)
	return nil
}

// Handler is the E2B-compatible API: REST routes and the proxy to sandboxes.
func (d *Daemon) Handler() http.Handler { return d.handler }

// MetricsHandler serves Prometheus metrics, per sandbox only to a scrape with cfg.MetricsToken.
func (d *Daemon) MetricsHandler() http.Handler { return api.MetricsHandler(d.mgr, d.cfg.MetricsToken) }

// Accel is the accelerator VMs run with (kvm or tcg).
func (d *Daemon) Accel() vmm.Accel { return d.accel }

// Manager is the daemon's sandbox manager, for callers that drive it in process (`cell bench`).
func (d *Daemon) Manager() *manager.Manager { return d.mgr }

// Settle waits until the VMs of paused sandboxes are gone: a pause returns before its QEMU has
// finished exiting (vmm.Host.Wait).
func (d *Daemon) Settle() { d.rt.Host.Wait() }

// Shutdown stops the daemon's sandboxes as mode says, waiting for in-flight creates until ctx
// ends, then releases everything the daemon holds. The caller stops serving Handler first. Only
// the first call does anything; later ones return what it returned.
func (d *Daemon) Shutdown(ctx context.Context, mode ShutdownMode) error {
	d.shutdown.Do(func() {
		m, err := mode.manager()
		if err != nil {
			m = manager.Leave // loses nothing: the next daemon re-adopts the VMs
		}
		d.err = errors.Join(err, d.release(ctx, m))
	})
	return d.err
}

// release stops the manager's sandboxes as mode says and gives back what Start took, in the
// reverse order; it does what applies to a daemon that came up only partly.
func (d *Daemon) release(ctx context.Context, mode manager.ShutdownMode) error {
	if d.tpl != nil {
		d.tpl.Close() // builds under way stop, their VMs too; Recover marks them failed
	}
	if d.mgr != nil {
		d.mgr.Shutdown(ctx, mode)
	}
	if d.rt != nil {
		d.rt.Host.Wait() // paused sandboxes' VMs finish going away in the background
	}
	var errs []error
	if d.st != nil {
		if err := d.st.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the store: %w", err))
		}
	}
	for _, l := range []*datadir.Lock{d.runLock, d.lock} {
		if err := l.Release(); err != nil {
			errs = append(errs, fmt.Errorf("releasing the data directory's lock: %w", err))
		}
	}
	return errors.Join(errs...)
}
