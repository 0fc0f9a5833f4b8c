package initd

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Trace prints a boot milestone with the guest's uptime to the console when the kernel command
// line has cell.trace (for profiling boots: `cell run --kernel-arg cell.trace`).
func Trace(what string) {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil || !strings.Contains(" "+string(cmdline)+" ", " cell.trace ") {
		return
	}
	// CLOCK_BOOTTIME: the uptime /proc/uptime gives in 10 ms steps, to the microsecond.
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	fmt.Fprintf(f, "cell.trace %s uptime=%.3f\n", what, float64(ts.Nano())/1e9)
}
