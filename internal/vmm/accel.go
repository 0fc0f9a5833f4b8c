package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// AccelChoice is the accelerator to use and why.
type AccelChoice struct {
	Accel  Accel  `json:"accel"`
	Reason string `json:"reason"`
	Key    string `json:"key"` // what the probe result depends on
}

// ProbeTimeout bounds the KVM test boot. A working KVM boots Cell's kernel to its panic in well
// under a second; a KVM that cannot run guests hangs.
const ProbeTimeout = 3 * time.Second

// ResolveAccel returns the accelerator: the override if one is given, else the probe's result,
// cached in cacheFile (keyed by the host's boot id, QEMU and the kernel).
func ResolveAccel(ctx context.Context, override Accel, qemu, kernel, cacheFile string) AccelChoice {
	if override != "" {
		return AccelChoice{Accel: override, Reason: "chosen with --accel"}
	}
	key := probeKey(qemu, kernel)
	if cacheFile != "" {
		if b, err := os.ReadFile(cacheFile); err == nil {
			var c AccelChoice
			if json.Unmarshal(b, &c) == nil && c.Key == key && (c.Accel == AccelKVM || c.Accel == AccelTCG) {
				c.Reason += " (cached probe)"
				return c
			}
		}
	}
	c := ProbeKVM(ctx, qemu, kernel)
	c.Key = key
	if cacheFile != "" {
		if b, err := json.Marshal(c); err == nil {
			tmp := cacheFile + ".tmp"
			if os.WriteFile(tmp, b, 0o644) == nil {
				_ = os.Rename(tmp, cacheFile)
			}
		}
	}
	return c
}

func probeKey(qemu, kernel string) string {
	h := sha256.New()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	h.Write(boot)
	for _, p := range []string{qemu, kernel} {
		if st, err := os.Stat(p); err == nil {
			fmt.Fprintf(h, "%s|%d|%d\n", p, st.Size(), st.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// ProbeKVM decides between KVM and TCG by booting kernel under KVM with no root disk: if KVM
// works, the kernel runs until it panics for want of a root file system, and QEMU exits (-no-reboot
// with panic=-1). If /dev/kvm cannot be opened, or the boot does not finish within ProbeTimeout,
// the answer is TCG.
func ProbeKVM(ctx context.Context, qemu, kernel string) AccelChoice {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelChoice{Accel: AccelTCG, Reason: "KVM unavailable: " + err.Error()}
	}
	_ = f.Close()
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "cell-kvm-probe-")
	if err != nil {
		return AccelChoice{Accel: AccelTCG, Reason: "KVM probe could not run: " + err.Error()}
	}
	defer func() { _ = os.RemoveAll(dir) }()
	cmd := exec.CommandContext(ctx, qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-M", "microvm,acpi=off,x-option-roms=off", "-accel", "kvm", "-cpu", "host", "-m", "128",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 reboot=t root=/dev/cell-probe-none",
		"-serial", "file:"+filepath.Join(dir, "console.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	switch {
	case ctx.Err() != nil:
		return AccelChoice{Accel: AccelTCG, Reason: fmt.Sprintf("KVM present but a test guest did not finish booting within %v under it", ProbeTimeout)}
	case err != nil:
		return AccelChoice{Accel: AccelTCG, Reason: fmt.Sprintf("KVM present but QEMU failed under it: %v: %s", err, strings.TrimSpace(string(out)))}
	case !strings.Contains(string(console), "Kernel panic"):
		return AccelChoice{Accel: AccelTCG, Reason: "KVM present but the test guest printed nothing under it"}
	}
	return AccelChoice{Accel: AccelKVM, Reason: "KVM works: a test guest booted under it"}
}
