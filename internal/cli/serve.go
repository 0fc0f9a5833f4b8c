package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/api"
	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/vmm"
)

func (g *globals) openStore(ctx context.Context) (*store.Store, error) {
	home, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	return store.Open(ctx, filepath.Join(home, "cell.db"))
}

func serveCmd(g *globals) *cobra.Command {
	var listen, domain, accel, metricsListen, metricsTokenFile, metricsToken, minFree string
	var maxConns, maxStreams, maxSandboxStreams, diskMiB int
	var nf netFlags
	var leave, cold, pauseAll bool
	var pools map[string]int
	var grace time.Duration
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the E2B-compatible API server",
		Long: `Run the E2B-compatible API server. Point E2B's SDKs at it with
E2B_API_URL=http://ADDR E2B_SANDBOX_URL=http://ADDR E2B_API_KEY=<key from cell apikey create>.

On SIGTERM or SIGINT it stops accepting, finishes in-flight calls (up to --grace), then kills
every sandbox, or with --leave-running leaves them for the next cell serve to re-adopt.`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			for name, v := range map[string]int{"--max-conns": maxConns, "--max-proxy-streams": maxStreams, "--max-sandbox-streams": maxSandboxStreams} {
				if v < 1 {
					return fmt.Errorf("%s: %d must be at least 1", name, v)
				}
			}
			if metricsTokenFile != "" {
				if metricsListen == "" {
					return errors.New("--metrics-token-file: only with --metrics-listen")
				}
				var err error
				if metricsToken, err = api.ReadTokenFile(metricsTokenFile); err != nil {
					return fmt.Errorf("--metrics-token-file: %w", err)
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			// One daemon per data directory, before anything else: a second one would take the
			// first one's VMs for orphans and destroy them.
			home, err := g.homeDir()
			if err != nil {
				return err
			}
			lock, err := datadir.Acquire(home, "cell serve")
			if err != nil {
				return err
			}
			defer func() { _ = lock.Release() }()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			log := g.logger()
			acc, err := vmm.ParseAccel(accel)
			if err != nil {
				return err
			}
			hosts, exempt, err := nf.parse()
			if err != nil {
				return err
			}
			warnUnreachable(log, hosts, exempt)
			reserve, err := vmm.ParseReserve(minFree)
			if err != nil {
				return fmt.Errorf("--min-free-disk: %w", err)
			}
			if diskMiB < sandbox.DefaultDiskMiB || diskMiB > sandbox.MaxDiskMiB {
				return fmt.Errorf("--disk-size %d: must be from %d (the image's file system) to %d MiB", diskMiB, sandbox.DefaultDiskMiB, sandbox.MaxDiskMiB)
			}
			rt, choice, err := g.runtime(ctx, runtimeOpts{accel: acc, detached: true, dnsHosts: hosts, netExempt: exempt, minFreeDisk: &reserve})
			if err != nil {
				return err
			}
			// The run directory may be shared (CELL_RUN_DIR): one daemon in it at a time, or one
			// would take the other's VMs, left running across a restart, for orphans.
			runLock, err := datadir.Acquire(rt.Host.RunDir(), "cell serve")
			if err != nil {
				return err
			}
			defer func() { _ = runLock.Release() }()
			log.Info("accelerator", "accel", choice.Accel, "reason", choice.Reason)
			if !cold {
				// Sandboxes are restored from the base template's memory snapshot; without one
				// they boot cold, which works, only slower.
				if err := g.useTemplate(ctx, rt, "base"); err != nil {
					log.Warn("no template snapshot: sandboxes will boot cold", "err", err)
				} else {
					log.Info("template snapshot ready", "template", "base", "dir", rt.Template("base").Dir)
				}
			}
			st, err := g.openStore(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = st.Close() }()
			mgr, err := manager.New(ctx, manager.Config{Runtime: manager.SandboxRuntime(rt), Templates: rt, Store: st, RunDir: rt.Host.RunDir(),
				PausedDir: filepath.Join(home, "paused"), TemplateHome: home, DiskMiB: diskMiB, Disk: rt.Host.DiskGuard(), Log: log})
			if err != nil {
				return err
			}
			// Paused sandboxes' VMs finish going away in the background (vmm.VM.Release): wait
			// for them on the way out.
			defer rt.Host.Wait()
			if snaps, err := rt.LoadSnapshots(home); err == nil {
				for _, t := range snaps {
					rt.SetTemplate(t.Name, t)
				}
			}
			if err := mgr.Recover(ctx); err != nil {
				return err
			}
			// After Recover: outdated templates are gone, so are the base disks only they used.
			g.pruneImages(ctx, rt.Host.RunDir(), nil)
			for name, n := range pools {
				if rt.Template(name) == nil {
					log.Warn("no pool without a template snapshot", "template", name)
					continue
				}
				mgr.StartPool(name, n)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				mgr.Shutdown(context.Background(), manager.Leave)
				return fmt.Errorf("listening on %s: %w", listen, err)
			}
			h := api.New(api.Config{Manager: mgr, Keys: auth.Keys{Store: st}, Domain: domain, Log: log,
				MaxStreams: maxStreams, MaxSandboxStreams: maxSandboxStreams})
			srv := api.NewServer(h, log)
			fmt.Fprintf(os.Stderr, "cell: serving on http://%s (accel %s)\n", ln.Addr(), choice.Accel)
			ln = api.LimitListener(ln, maxConns)
			errc := make(chan error, 2)
			go func() { errc <- srv.Serve(ln) }()
			if metricsListen != "" {
				mln, err := net.Listen("tcp", metricsListen)
				if err != nil {
					_ = srv.Close()
					mgr.Shutdown(context.Background(), manager.Leave)
					return fmt.Errorf("--metrics-listen %s: %w", metricsListen, err)
				}
				msrv := &http.Server{Handler: api.MetricsHandler(mgr, metricsToken), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: api.IdleTimeout}
				mln = api.LimitListener(mln, 64)
				defer func() { _ = msrv.Close() }()
				go func() {
					if err := msrv.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
						errc <- err
					}
				}()
				fmt.Fprintf(os.Stderr, "cell: metrics on http://%s/metrics\n", mln.Addr())
			}
			select {
			case err := <-errc:
				mgr.Shutdown(context.Background(), manager.Leave)
				return fmt.Errorf("serving: %w", err)
			case <-ctx.Done():
			}
			fmt.Fprintln(os.Stderr, "cell: shutting down")
			sctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				log.Warn("http shutdown", "err", err)
			}
			_ = srv.Close() // streams still open after the grace period
			mode := manager.Kill
			switch {
			case leave:
				mode = manager.Leave
			case pauseAll:
				mode = manager.PauseAll
			}
			mgr.Shutdown(sctx, mode)
			return nil
		},
	}
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:3000", "address to listen on")
	c.Flags().StringVar(&domain, "domain", "", "sandbox domain reported to clients; hosts {port}-{id}.{domain} are routed to sandboxes")
	c.Flags().StringVar(&accel, "accel", "auto", "auto, kvm or tcg")
	c.Flags().BoolVar(&cold, "cold", false, "boot every sandbox instead of restoring the base template's memory snapshot")
	c.Flags().StringToIntVar(&pools, "pool", nil, "keep this many restored, warmed sandboxes of a template ready, e.g. base=4")
	c.Flags().BoolVar(&pauseAll, "pause-on-shutdown", false, "on shutdown, pause running sandboxes (with their RAM) instead of killing them")
	c.Flags().BoolVar(&leave, "leave-running", false, "on shutdown, leave sandboxes running for the next cell serve to re-adopt")
	c.Flags().DurationVar(&grace, "grace", 10*time.Second, "how long shutdown waits for in-flight calls")
	c.Flags().StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus metrics on this (operator-only) address, e.g. 127.0.0.1:9464; per-sandbox series need --metrics-token-file")
	c.Flags().StringVar(&metricsTokenFile, "metrics-token-file", "", "file holding a bearer token that every scrape of --metrics-listen must present (Prometheus: authorization.credentials_file); with it the metrics name each sandbox (sandbox ids are capabilities for public ports), without it only the count of running sandboxes is served")
	c.Flags().IntVar(&maxConns, "max-conns", api.DefaultMaxConns, "serve at most this many client connections at once (more wait to be accepted)")
	c.Flags().IntVar(&maxStreams, "max-proxy-streams", api.DefaultMaxStreams, "at most this many proxied requests to sandboxes (envd calls and streams, exposed ports, WebSockets) in flight in total (more get 503)")
	c.Flags().IntVar(&maxSandboxStreams, "max-sandbox-streams", api.DefaultMaxSandboxStreams, "at most this many proxied requests in flight per sandbox, to its envd and to its ports each (more get 429)")
	c.Flags().IntVar(&diskMiB, "disk-size", sandbox.DefaultDiskMiB, "each sandbox's disk in MiB unless its create asks for another: the most it can write on this host (above the image's 2048, each create grows the guest's file system)")
	c.Flags().StringVar(&minFree, "min-free-disk", vmm.DefaultMinFreeDisk, "free space kept on the data directory's disk: a size, a percentage of the disk, or the larger of both; creates, resumes and snapshots that could take it are refused (507)")
	nf.register(c)
	return c
}
