package vmm

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// HostTSCkHz reads the host CPU's frequency in kHz from /proc/cpuinfo. The guest is told this
// frequency so that it does not calibrate its TSC (which under TCG sometimes hangs).
func HostTSCkHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("reading CPU frequency: %w", err)
	}
	defer func() { _ = f.Close() }()
	return parseCPUInfoKHz(f)
}

func parseCPUInfoKHz(f *os.File) (int, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("parsing cpu MHz %q: %v", v, err)
		}
		return int(mhz * 1000), nil
	}
	return 0, fmt.Errorf("no 'cpu MHz' line in /proc/cpuinfo")
}
