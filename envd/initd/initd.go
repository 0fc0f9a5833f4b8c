package initd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type mount struct {
	src, target, fstype string
	flags               uintptr
	data                string
	mode                os.FileMode
}

// mounts lists what setupFS mounts. /proc is not among them: Main mounts it first (mounting it
// again would stack a second proc on the first).
func mounts() []mount {
	return []mount{
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666", 0o755},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	}
}

func setupFS() error {
	var errs []error
	for _, m := range mounts() {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			errs = append(errs, fmt.Errorf("mkdir %s: %w", m.target, err))
			continue
		}
		if err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	for link, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func setHostname() {
	name := "sandbox"
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(f, "cell.hostname="); ok && v != "" {
				name = v
			}
		}
	}
	_ = unix.Sethostname([]byte(name))
}

// loopbackUp brings up "lo" so that servers in the guest are reachable on 127.0.0.1.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { _ = unix.Close(fd) }()
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// configureHost sets the host name, brings up the loopback and sets up eth0 as the kernel command
// line says, and logs what failed.
func configureHost(log *slog.Logger) {
	setHostname()
	if err := loopbackUp(); err != nil {
		log.Warn("bringing up lo", "err", err)
	}
	if err := networkUp(); err != nil {
		log.Warn("configuring the network", "err", err)
	}
	Trace("init: network configured")
}

// Serve runs envd's server in PID 1 until ctx ends: commands wait for netReady to close, and
// every child goes through guard (see process.Service.GuardChildren).
type Serve func(ctx context.Context, netReady <-chan struct{}, guard *Reaper) int

// Main runs PID 1, which serves the host itself (serve): a server in a child process of its own
// cost a cold boot ~40-110 ms under TCG (the fork and exec of envd again, and the Go runtime's
// and the packages' start a second time).
func Main(log *slog.Logger, serve Serve) int {
	// /proc first, so that the boot can be traced from here on.
	_ = os.MkdirAll("/proc", 0o555)
	_ = unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	Trace("init: started")
	if err := setupFS(); err != nil {
		log.Warn("setting up file systems", "err", err)
	}
	Trace("init: file systems mounted")
	_ = os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	_ = os.Setenv("HOME", "/root")

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPWR, unix.SIGUSR2)
	reaper := NewReaper()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	// The host name, the loopback and the network are set up while the server starts (each
	// takes tens of ms of a cold boot under TCG). The server runs no command before they are.
	netReady := make(chan struct{})
	go func() {
		configureHost(log)
		close(netReady)
	}()
	go func() {
		for ctx.Err() == nil {
			code := serve(ctx, netReady, reaper)
			if ctx.Err() != nil {
				return
			}
			log.Error("envd server ended; restarting it", "code", code)
			time.Sleep(100 * time.Millisecond)
		}
	}()

	// A child of envd's own that has exited holds back the orphans behind it until its owner
	// has waited for it (see Reaper.Reap): they are looked at again shortly.
	retry := time.NewTimer(0)
	<-retry.C
	for {
		select {
		case sig := <-sigs:
			if sig != unix.SIGCHLD {
				log.Info("powering off", "signal", sig.String())
				stop()
				powerOff()
				return 0
			}
		case <-retry.C:
		}
		if reaper.Reap() {
			retry.Reset(10 * time.Millisecond)
		}
	}
}

// powerOff stops every process, syncs, and resets the VM (QEMU runs with -no-reboot, so a reset
// ends it cleanly).
func powerOff() {
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			break
		}
		if pid <= 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
