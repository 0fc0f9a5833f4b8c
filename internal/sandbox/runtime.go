package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
)

// RuntimeConfig is what NewRuntime needs.
type RuntimeConfig struct {
	Home      string // data directory: image cache, accel probe cache, run dir
	ImageHome string // where the image cache lives (default Home)
	Envd      string // envd binary for the image
	// OverlayOptions are qemu-img's -o options for new qcow2 overlays (vmm.Config).
	OverlayOptions string
	RunDir         string // where VM directories go; default from Home (see RunDir)
	AccelCache     string // the accelerator probe's cache file; default Home/accel.json
	Accel          vmm.Accel
	MaxVMs         int
	Attempts       int
	BootTimeout    time.Duration
	DieWithParent  bool
	// Detached VMs outlive this process (for `cell serve`, which re-adopts them on restart).
	Detached bool
	// Build builds the image when it is missing (with progress to Progress); otherwise a missing
	// image is an error.
	Build    bool
	Progress io.Writer
	// DNSHosts are names every sandbox resolves to fixed addresses (operator overrides).
	DNSHosts map[string]netip.Addr
	// NetExempt are reserved destinations (see netstack.Guard) sandboxes may reach anyway.
	NetExempt []netip.Prefix
	// NoNetwork gives VMs no network device at all.
	NoNetwork bool
	// ResolvConf names the host's resolvers sandboxes' DNS asks (default /etc/resolv.conf).
	ResolvConf string
	// MinFreeDisk, when set, is kept free on the run directory's file system: a VM whose disk
	// could grow into it is refused (vmm.ErrInsufficientStorage). nil: no check.
	MinFreeDisk *vmm.Reserve
	Log         *slog.Logger
}

// FindTool looks a host tool up on PATH and names the Debian package when it is missing.
func FindTool(name, pkg string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: apt-get install -y %s (or run `make setup`)", name, pkg)
	}
	return p, nil
}

// RunDir is where VM working directories go: home/run when socket paths fit in it, else a
// private per-user directory under the system's temporary directory, one per data directory
// (named by a hash of home's path: two data directories never share one).
func RunDir(home string) (string, error) {
	d := datadir.Layout{Home: home}.Run()
	if len(d) <= 70 {
		return d, nil
	}
	parent := filepath.Join(os.TempDir(), "cell-"+strconv.Itoa(os.Getuid()))
	sum := sha256.Sum256([]byte(home))
	d = filepath.Join(parent, hex.EncodeToString(sum[:6]))
	for _, p := range []string{parent, d} {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		if !st.IsDir() || st.Mode().Perm() != 0o700 || !ownedByUs(st) {
			return "", fmt.Errorf("run dir %s: not a private directory of this user", p)
		}
	}
	return d, nil
}

// ownedByUs says whether st (from Lstat) belongs to this process's user.
func ownedByUs(st fs.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == os.Getuid()
}

// NewRuntime finds (or builds) the image, resolves the accelerator and returns a Runtime.
func NewRuntime(ctx context.Context, cfg RuntimeConfig) (*Runtime, vmm.AccelChoice, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	qemuImg, err := FindTool("qemu-img", "qemu-utils")
	if err != nil {
		return nil, vmm.AccelChoice{}, err
	}
	if cfg.ImageHome == "" {
		cfg.ImageHome = cfg.Home
	}
	b := &image.Builder{Home: cfg.ImageHome, Envd: cfg.Envd, Progress: cfg.Progress, Log: cfg.Log}
	img, err := b.Lookup()
	if err != nil {
		if !cfg.Build {
			return nil, vmm.AccelChoice{}, err
		}
		if cfg.Progress != nil {
			fmt.Fprintln(cfg.Progress, "cell: the guest image is not built yet; building it now")
		}
		if img, err = b.Ensure(ctx, false); err != nil {
			return nil, vmm.AccelChoice{}, err
		}
	}
	rd := cfg.RunDir
	if rd == "" {
		if rd, err = RunDir(cfg.Home); err != nil {
			return nil, vmm.AccelChoice{}, err
		}
	}
	qemu := img.QEMU // Cell's own build (see images/qemu)
	if img.QEMUFallback != "" {
		cfg.Log.Warn("Cell's QEMU could not be built; Debian's starts ~15 ms slower (`cell image build --force` tries again)", "why", img.QEMUFallback)
	}
	if cfg.AccelCache == "" {
		cfg.AccelCache = datadir.Layout{Home: cfg.Home}.Accel()
	}
	choice := vmm.ResolveAccel(ctx, cfg.Accel, qemu, img.Kernel, cfg.AccelCache)
	if cfg.MaxVMs == 0 {
		cfg.MaxVMs = 64
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = 3
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	upstream, err := netstack.HostResolvers(cfg.ResolvConf)
	if err != nil {
		// Sandboxes still resolve the operator's names; everything else fails clearly.
		cfg.Log.Warn("no upstream DNS for sandboxes", "resolv_conf", cfg.ResolvConf, "err", err)
	}
	vcfg := vmm.Config{
		QEMU: qemu, QEMUImg: qemuImg, OverlayOptions: cfg.OverlayOptions, RunDir: rd, MaxVMs: cfg.MaxVMs, Attempts: cfg.Attempts,
		BootTimeout: cfg.BootTimeout, DieWithParent: cfg.DieWithParent, Detached: cfg.Detached, Sandbox: true, Log: cfg.Log,
	}
	if cfg.MinFreeDisk != nil {
		vcfg.Disk = &vmm.DiskGuard{Dir: rd, Reserve: *cfg.MinFreeDisk}
	}
	netVM(&vcfg, cfg.NoNetwork)
	host, err := vmm.NewHost(vcfg)
	if err != nil {
		return nil, choice, err
	}
	env := NetEnv{
		Off:      cfg.NoNetwork,
		Resolver: &netstack.Resolver{Hosts: cfg.DNSHosts, Upstream: upstream},
		Guard:    &netstack.Guard{Exempt: cfg.NetExempt},
	}
	return &Runtime{Host: host, Image: img, Accel: choice.Accel, Net: env, Log: cfg.Log}, choice, nil
}

// Slots says how many VM slots are held, and how many of them past the limit (see vmm.Host.Slots).
func (r *Runtime) Slots() (used, over int) { return r.Host.Slots() }
