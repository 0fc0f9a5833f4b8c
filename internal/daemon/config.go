package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"

	"github.com/cellhq/cell/internal/api"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

// Config is what a daemon is started with: what `cell serve`'s flags and environment set, once
// parsed. The zero value of a field is its default where one is named. Validate's errors name
// the flag that sets a field, for the operator who reads them.
type Config struct {
	// Home is the data directory (--home, $CELL_HOME), an absolute path: its lock, the store
	// (cell.db), paused sandboxes, templates of snapshots, the accelerator probe's cache, and
	// the run directory unless RunDir is set.
	Home string
	// ImageHome is the data directory whose image cache and base template to use
	// ($CELL_IMAGE_HOME); "" is Home. Earlier recipes' images are pruned only when it is Home
	// (a cache shared with other data directories may hold base disks they depend on).
	ImageHome string
	// RunDir is where VM directories go ($CELL_RUN_DIR); "" derives it from Home (sandbox.RunDir).
	RunDir string
	// AccelCache is the accelerator probe's cache file; "" is Home/accel.json. (A probe boots a
	// VM, and may take seconds.)
	AccelCache string
	// Envd is the envd binary installed in the guest image (--envd).
	Envd string
	// OverlayOptions are qemu-img's -o options for every new qcow2 overlay
	// ($CELL_QCOW2_OPTIONS; "" is qemu-img's defaults).
	OverlayOptions string
	// Name is what the data directory's lock says holds it, for the message a second daemon
	// gets ("" is "cell serve").
	Name string

	Accel       vmm.Accel    // --accel: "" (auto), kvm or tcg
	MaxVMs      int          // --max-vms; 0 is the runtime's default (64)
	MinFreeDisk *vmm.Reserve // --min-free-disk; nil: VMs are not checked against free space
	DiskMiB     int          // --disk-size: a sandbox's disk unless its create asks for another
	// TemplateCacheBytes bounds the template build layers kept (--template-cache-size; 0: no
	// bound).
	TemplateCacheBytes int64
	DNSHosts           map[string]netip.Addr // --dns-host, --dns-hosts-file
	NetExempt          []netip.Prefix        // --net-allow-reserved
	// RegistryMirrors are where template builds pull images of a registry from
	// (--registry-mirror docker.io=http://127.0.0.1:5000).
	RegistryMirrors []string

	// Cold boots every sandbox instead of restoring the base template's memory snapshot (--cold).
	Cold bool
	// RequireTemplate fails Start when the base template's snapshot cannot be had, instead of
	// warning and booting sandboxes cold (`cell bench` measures restores, never cold boots).
	RequireTemplate bool
	// Pools keeps this many restored, warmed sandboxes of a template ready (--pool).
	Pools map[string]int

	// Attached VMs die with this process and are never left for a next daemon to adopt
	// (`cell bench`); by default VMs are detached, so that a restarted daemon re-adopts them.
	Attached bool
	// BootAttempts is how often a VM start is tried; 0 is the runtime's default (3).
	BootAttempts int

	Domain            string // --domain
	MaxProxyStreams   int    // --max-proxy-streams; 0 is the API's default
	MaxSandboxStreams int    // --max-sandbox-streams; 0 is the API's default
	// MetricsToken is the bearer token MetricsHandler wants (--metrics-token-file's content);
	// "" serves only the count of running sandboxes.
	MetricsToken string

	Log *slog.Logger
	// Progress receives the image build's progress when the image is missing (nil: none).
	Progress io.Writer
}

// Validate says what is wrong with c, before Start takes anything.
func (c *Config) Validate() error {
	var errs []error
	if c.Home == "" || !filepath.IsAbs(c.Home) {
		errs = append(errs, fmt.Errorf("data directory %q: must be an absolute path", c.Home))
	}
	if c.Envd == "" {
		errs = append(errs, errors.New("no envd binary for the guest image"))
	}
	switch c.Accel {
	case "", vmm.AccelKVM, vmm.AccelTCG:
	default:
		errs = append(errs, fmt.Errorf("--accel %q: not one of auto, kvm, tcg", c.Accel))
	}
	if c.MaxVMs < 0 {
		errs = append(errs, fmt.Errorf("--max-vms %d: must be positive", c.MaxVMs))
	}
	if c.BootAttempts < 0 {
		errs = append(errs, fmt.Errorf("boot attempts %d: must be positive", c.BootAttempts))
	}
	if c.DiskMiB < sandbox.DefaultDiskMiB || c.DiskMiB > sandbox.MaxDiskMiB {
		errs = append(errs, fmt.Errorf("--disk-size %d: must be from %d (the image's file system) to %d MiB", c.DiskMiB, sandbox.DefaultDiskMiB, sandbox.MaxDiskMiB))
	}
	for _, f := range []struct {
		flag string
		v    int
	}{{"--max-proxy-streams", c.MaxProxyStreams}, {"--max-sandbox-streams", c.MaxSandboxStreams}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d must be at least 1", f.flag, f.v))
		}
	}
	return errors.Join(errs...)
}

// withDefaults is c with its defaults filled in.
func (c Config) withDefaults() Config {
	if c.ImageHome == "" {
		c.ImageHome = c.Home
	}
	if c.Name == "" {
		c.Name = "cell serve"
	}
	// The API leaves proxied requests unbounded when given neither bound; a daemon always has both.
	c.MaxProxyStreams = cmp.Or(c.MaxProxyStreams, api.DefaultMaxStreams)
	c.MaxSandboxStreams = cmp.Or(c.MaxSandboxStreams, api.DefaultMaxSandboxStreams)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}
