// Command envd is Cell's guest agent. As PID 1 it is the guest's init and serves the API the host
// talks to over the channel; "envd serve" serves it alone (outside a Cell guest's PID 1).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cellhq/cell/envd/filesystem"
	"github.com/cellhq/cell/envd/initd"
	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/server"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/envd/vport"
	"github.com/cellhq/cell/internal/channel"
	"github.com/cellhq/cell/pkg/envd"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if os.Getpid() == 1 {
		os.Exit(initd.Main(log, func(ctx context.Context, netReady <-chan struct{}, guard *initd.Reaper) int {
			return serve(ctx, log, serveConfig{port: channel.PortName, user: "user", ready: netReady, guard: guard})
		}))
	}
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		os.Exit(serveCommand(log, os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(envd.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: envd serve [-port NAME]  (as PID 1, envd is the guest's init)")
	os.Exit(2)
}

// serveCommand is "envd serve [-port NAME] [-user NAME]".
func serveCommand(log *slog.Logger, args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	portName := fs.String("port", channel.PortName, "virtio-serial port name")
	user := fs.String("user", "user", "default user for commands")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serve(ctx, log, serveConfig{port: *portName, user: *user})
}

// serveConfig is what serve needs besides its context.
type serveConfig struct {
	port, user string
	ready      <-chan struct{}    // commands wait for it to close (nil: they do not wait)
	guard      process.ChildGuard // nil: no reaper to keep away from commands
}

// serve serves the host on the channel's port until ctx ends.
func serve(ctx context.Context, log *slog.Logger, cfg serveConfig) int {
	initd.Trace("serve: started")
	path, err := vport.Find("/sys", cfg.port)
	if err != nil {
		log.Error("finding the host channel", "err", err)
		return 1
	}
	port, err := vport.Open(path)
	if err != nil {
		log.Error("opening the host channel", "err", err)
		return 1
	}
	defer func() { _ = port.Close() }()
	initd.Trace("serve: port open")
	reseeder, err := server.OpenReseeder()
	if err != nil {
		log.Error("opening the kernel's RNG", "err", err)
		return 1
	}
	defer func() { _ = reseeder.Close() }()
	defaults := state.New(cfg.user)
	users := &process.Users{}
	procs := process.New(log, defaults, users)
	defer procs.Close()
	if cfg.ready != nil {
		procs.StartAfter(cfg.ready)
	}
	if cfg.guard != nil {
		procs.GuardChildren(cfg.guard)
	}
	files := filesystem.New(log, defaults, users)
	defer files.Close()
	svc := server.Services{
		Defaults: defaults, Users: users, Process: procs, FS: files, Metrics: &server.Metrics{Root: "/"},
		PowerOff: func() { _ = syscall.Kill(1, syscall.SIGTERM) },
		SetClock: server.SetClock, SetHostname: server.SetHostname, Log: log,
	}
	server.ServeChannel(ctx, log, func() server.Conn { return port.Next() }, server.Handler(svc),
		server.Visits{Idle: idleNotice(log), SetClock: server.SetClock, Reseed: reseeder.Reseed, Init: svc.ApplyInit})
	return 0
}

// idleNotice returns a function that prints channel.IdleMarker on the console, by which the host
// knows that envd has let go of a host's session before it snapshots the VM.
func idleNotice(log *slog.Logger) func() {
	con, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		log.Warn("opening the console", "err", err)
		return nil
	}
	return func() { _, _ = con.WriteString(channel.IdleMarker + "\n") }
}
