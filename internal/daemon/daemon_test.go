package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellhq/cell/internal/api"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

// valid is a configuration Validate accepts, as `cell serve`'s defaults make it.
func valid(t *testing.T) Config {
	return Config{Home: filepath.Join(t.TempDir(), "home"), Envd: "/usr/local/bin/envd", MaxVMs: 64,
		DiskMiB: sandbox.DefaultDiskMiB, MaxProxyStreams: 1, MaxSandboxStreams: 1}
}

func TestValidate(t *testing.T) {
	if c := valid(t); c.Validate() != nil {
		t.Fatalf("the defaults: %v", c.Validate())
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // in the error
	}{
		{"no home", func(c *Config) { c.Home = "" }, "data directory"},
		{"relative home", func(c *Config) { c.Home = "cell" }, "absolute"},
		{"no envd", func(c *Config) { c.Envd = "" }, "envd"},
		{"accel", func(c *Config) { c.Accel = "hvf" }, "--accel"},
		{"max vms", func(c *Config) { c.MaxVMs = -1 }, "--max-vms"},
		{"boot attempts", func(c *Config) { c.BootAttempts = -1 }, "boot attempts"},
		{"disk too small", func(c *Config) { c.DiskMiB = sandbox.DefaultDiskMiB - 1 }, "--disk-size"},
		{"disk unset", func(c *Config) { c.DiskMiB = 0 }, "--disk-size 0"},
		{"disk too large", func(c *Config) { c.DiskMiB = sandbox.MaxDiskMiB + 1 }, "--disk-size"},
		{"proxy streams", func(c *Config) { c.MaxProxyStreams = -1 }, "--max-proxy-streams"},
		{"sandbox streams", func(c *Config) { c.MaxSandboxStreams = -1 }, "--max-sandbox-streams"},
	} {
		c := valid(t)
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	// Every fault at once, not the first only.
	c := valid(t)
	c.Envd, c.DiskMiB = "", 1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "envd") || !strings.Contains(err.Error(), "--disk-size") {
		t.Errorf("two faults: %v", err)
	}
	// What zero means a default for is valid.
	c = valid(t)
	c.MaxVMs, c.BootAttempts, c.MaxProxyStreams, c.MaxSandboxStreams, c.Accel = 0, 0, 0, 0, vmm.AccelTCG
	if err := c.Validate(); err != nil {
		t.Errorf("zero defaults: %v", err)
	}
}

func TestShutdownModeOf(t *testing.T) {
	for _, tc := range []struct {
		leave, pause bool
		want         ShutdownMode
		manager      manager.ShutdownMode
		text         string
	}{
		{false, false, Kill, manager.Kill, "kill"},
		{true, false, Leave, manager.Leave, "leave-running"},
		{false, true, Pause, manager.PauseAll, "pause"},
		{true, true, Leave, manager.Leave, "leave-running"}, // as cell serve always did
	} {
		got := ShutdownModeOf(tc.leave, tc.pause)
		if got != tc.want || got.String() != tc.text {
			t.Errorf("--leave-running=%v --pause-on-shutdown=%v: %v, want %v", tc.leave, tc.pause, got, tc.want)
		}
		if m, err := got.manager(); err != nil || m != tc.manager {
			t.Errorf("%v: the manager's mode %v %v, want %v", got, m, err, tc.manager)
		}
	}
	if m, err := ShutdownMode(7).manager(); err == nil {
		t.Errorf("mode 7: %v, want an error", m)
	}
	if s := ShutdownMode(7).String(); !strings.Contains(s, "7") {
		t.Errorf("mode 7 reads %q", s)
	}
}

// TestStartFailingMidwayReleasesTheLock: a Start that fails after it took the data directory's
// lock (here, building the runtime: no qemu-img on PATH) gives the lock back, so that the next
// daemon starts.
func TestStartFailingMidwayReleasesTheLock(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	cfg := valid(t)
	_, err := Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "qemu-img") {
		t.Fatalf("Start without qemu-img: %v, want the runtime's error", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Home, datadir.LockFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock file after the failed Start: %v, want it removed", err)
	}
	l, err := datadir.Acquire(cfg.Home, "test")
	if err != nil {
		t.Fatalf("the data directory after the failed Start: %v", err)
	}
	_ = l.Release()
}

// TestStartRefusesAHeldDataDirectory: a second daemon on a data directory stops at its lock,
// with the holder named, and leaves the holder's lock alone.
func TestStartRefusesAHeldDataDirectory(t *testing.T) {
	cfg := valid(t)
	held, err := datadir.Acquire(cfg.Home, "cell serve")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Release() }()
	_, err = Start(context.Background(), cfg)
	if !errors.Is(err, datadir.ErrInUse) || !strings.Contains(err.Error(), "cell serve") {
		t.Fatalf("Start on a held data directory: %v, want ErrInUse naming the holder", err)
	}
	if _, err := datadir.Acquire(cfg.Home, "test"); !errors.Is(err, datadir.ErrInUse) {
		t.Fatalf("the holder's lock after the refused Start: %v, want it still held", err)
	}
}

func TestStartRefusesAnInvalidConfigBeforeTakingAnything(t *testing.T) {
	cfg := valid(t)
	cfg.DiskMiB = 1
	if _, err := Start(context.Background(), cfg); err == nil {
		t.Fatal("Start with --disk-size 1 succeeded")
	}
	if _, err := os.Stat(cfg.Home); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the data directory after a refused configuration: %v, want it never made", err)
	}
}

// TestWarnUnreachable: a --dns-host name pinned to an address sandboxes cannot reach is logged.
func TestWarnUnreachable(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	hosts := map[string]netip.Addr{"a.test": netip.MustParseAddr("10.0.0.1"), "b.test": netip.MustParseAddr("10.1.0.1"), "c.test": netip.MustParseAddr("1.1.1.1")}
	warnUnreachable(log, hosts, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")})
	if out := buf.String(); !strings.Contains(out, "name=a.test") || strings.Contains(out, "b.test") || strings.Contains(out, "c.test") {
		t.Fatalf("log:\n%s", out)
	}
}

// TestDefaults: what a zero field means is what cell serve's flags default to, and a field that
// is set is kept.
func TestDefaults(t *testing.T) {
	c := valid(t)
	c.MaxProxyStreams, c.MaxSandboxStreams = 0, 0
	d := c.withDefaults()
	if d.ImageHome != c.Home || d.Name != "cell serve" || d.Log == nil ||
		d.MaxProxyStreams != api.DefaultMaxStreams || d.MaxSandboxStreams != api.DefaultMaxSandboxStreams {
		t.Errorf("defaults %+v", d)
	}
	c.ImageHome, c.Name, c.MaxProxyStreams, c.MaxSandboxStreams = "/images", "cell bench", 3, 4
	if d := c.withDefaults(); d.ImageHome != "/images" || d.Name != "cell bench" || d.MaxProxyStreams != 3 || d.MaxSandboxStreams != 4 {
		t.Errorf("set fields changed: %+v", d)
	}
}
