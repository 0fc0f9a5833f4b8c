package initd

import (
	"fmt"
	"os"
	"strings"
)

// Trace prints a boot milestone with the guest's uptime to the console when the kernel command
// line has cell.trace (for profiling boots: `cell run --kernel-arg cell.trace`).
func Trace(what string) {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil || !strings.Contains(" "+string(cmdline)+" ", " cell.trace ") {
		return
	}
	up, _ := os.ReadFile("/proc/uptime")
	f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	fmt.Fprintf(f, "cell.trace %s uptime=%s\n", what, strings.Fields(string(up) + " ?")[0])
}
