package initd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
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

// configureNetwork sets up eth0 as the kernel command line says, and logs what failed.
func configureNetwork(log *slog.Logger) {
	if err := networkUp(); err != nil {
		log.Warn("configuring the network", "err", err)
	}
	Trace("init: network configured")
}

// Main runs PID 1. serveArgs start envd's server (this same binary) as a child; Main adds
// -net-ready-fd to them.
func Main(log *slog.Logger, serveArgs []string) int {
	// /proc first, so that the boot can be traced from here on.
	_ = os.MkdirAll("/proc", 0o555)
	_ = unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	Trace("init: started")
	if err := setupFS(); err != nil {
		log.Warn("setting up file systems", "err", err)
	}
	Trace("init: file systems mounted")
	setHostname()
	if err := loopbackUp(); err != nil {
		log.Warn("bringing up lo", "err", err)
	}
	_ = os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	_ = os.Setenv("HOME", "/root")

	// The network is configured while the server starts (each takes ~60 ms of a cold boot under
	// TCG). The server runs no command before it is done: it reads netReady, whose write end is
	// closed once eth0 is configured (or has failed to be), to its end.
	netReady, netDone, err := os.Pipe()
	if err != nil {
		log.Warn("making the network-ready pipe; configuring the network first", "err", err)
		configureNetwork(log)
	} else {
		go func() {
			configureNetwork(log)
			_ = netDone.Close()
		}()
	}

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPWR, unix.SIGUSR2)

	serverPID := 0
	start := func() {
		args := serveArgs
		cmd := exec.Command("/proc/self/exe")
		if netReady != nil {
			cmd.ExtraFiles = []*os.File{netReady} // fd 3 in the server
			args = append(append([]string(nil), serveArgs...), "-net-ready-fd=3")
		}
		cmd.Args = append(cmd.Args, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		// No asynchronous preemption in the server: under TCG a goroutine easily runs past
		// the runtime's 10 ms slice, and each preemption is a signal whose delivery (kernel and
		// runtime paths, cold in every restored clone) costs more than the fairness it buys an
		// I/O-bound server. Commands get an environment of their own, without this.
		cmd.Env = append(os.Environ(), "GODEBUG=asyncpreemptoff=1")
		if err := cmd.Start(); err != nil {
			log.Error("starting envd server", "err", err)
			return
		}
		serverPID = cmd.Process.Pid
		_ = cmd.Process.Release() // PID 1 reaps it below
	}
	start()
	Trace("init: server started")
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			log.Info("powering off", "signal", sig.String())
			powerOff()
			return 0
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			if pid == serverPID {
				log.Error("envd server exited; restarting it", "status", ws.ExitStatus(), "signal", ws.Signal())
				time.Sleep(100 * time.Millisecond)
				start()
			}
		}
	}
	return 0
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
