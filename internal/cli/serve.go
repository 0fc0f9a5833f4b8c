package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/api"
	"github.com/cellhq/cell/internal/daemon"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

func serveCmd(g *globals) *cobra.Command {
	var cacheSize string
	var mirrors []string
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
			cfg, err := g.daemonConfig()
			if err != nil {
				return err
			}
			if cfg.Accel, err = vmm.ParseAccel(accel); err != nil {
				return err
			}
			if cfg.DNSHosts, cfg.NetExempt, err = nf.parse(); err != nil {
				return err
			}
			reserve, err := vmm.ParseReserve(minFree)
			if err != nil {
				return fmt.Errorf("--min-free-disk: %w", err)
			}
			cache, err := vmm.ParseSize(cacheSize)
			if err != nil {
				return fmt.Errorf("--template-cache-size: %w", err)
			}
			cfg.MinFreeDisk, cfg.DiskMiB, cfg.Cold, cfg.Pools, cfg.TemplateCacheBytes = &reserve, diskMiB, cold, pools, int64(cache)
			cfg.RegistryMirrors = mirrors
			cfg.Domain, cfg.MaxProxyStreams, cfg.MaxSandboxStreams, cfg.MetricsToken = domain, maxStreams, maxSandboxStreams, metricsToken
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			d, err := daemon.Start(ctx, cfg)
			if err != nil {
				return err
			}
			return serveDaemon(ctx, d, cfg.Log, serveOpts{listen: listen, metricsListen: metricsListen, maxConns: maxConns,
				grace: grace, mode: daemon.ShutdownModeOf(leave, pauseAll)})
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
	c.Flags().StringVar(&cacheSize, "template-cache-size", "16GiB", "template build layers kept at most (0: no bound): past it, after each build, the least recently used ones that no template's tag points at and nothing runs on are removed")
	c.Flags().StringArrayVar(&mirrors, "registry-mirror", nil, "pull a registry's images for template builds from a mirror, e.g. docker.io=http://127.0.0.1:5000 (repeat for more registries; the mirror is trusted, even on a private address)")
	nf.register(c)
	return c
}

// serveOpts are how `cell serve` serves a started daemon.
type serveOpts struct {
	listen, metricsListen string
	maxConns              int
	grace                 time.Duration // how long shutdown waits for in-flight calls
	mode                  daemon.ShutdownMode
}

// serveDaemon serves d's API (and its metrics, with metricsListen) until ctx ends or serving
// fails, then shuts d down: in o.mode once ctx ended, leaving its sandboxes running on a failure.
func serveDaemon(ctx context.Context, d *daemon.Daemon, log *slog.Logger, o serveOpts) error {
	fail := func(err error) error {
		return errors.Join(err, d.Shutdown(context.Background(), daemon.Leave))
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fail(fmt.Errorf("listening on %s: %w", o.listen, err))
	}
	srv := api.NewServer(d.Handler(), log)
	fmt.Fprintf(os.Stderr, "cell: serving on http://%s (accel %s)\n", ln.Addr(), d.Accel())
	ln = api.LimitListener(ln, o.maxConns)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if o.metricsListen != "" {
		mln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			_ = srv.Close()
			return fail(fmt.Errorf("--metrics-listen %s: %w", o.metricsListen, err))
		}
		msrv := &http.Server{Handler: d.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: api.IdleTimeout}
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
		return fail(fmt.Errorf("serving: %w", err))
	case <-ctx.Done():
	}
	fmt.Fprintln(os.Stderr, "cell: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), o.grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("http shutdown", "err", err)
	}
	_ = srv.Close() // streams still open after the grace period
	if err := d.Shutdown(sctx, o.mode); err != nil {
		log.Warn("shutdown", "mode", o.mode, "err", err)
	}
	return nil
}
