package bench

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// procField reads a "Name:   N kB" line of a /proc file, in MiB (0 when missing).
func procField(path, name string) float64 {
	fh, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer func() { _ = fh.Close() }()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// RSSMiB is a process's resident memory.
func RSSMiB(pid int) float64 { return procField("/proc/"+strconv.Itoa(pid)+"/status", "VmRSS") }

// PSSMiB is a process's proportional share of memory: pages shared with others (a template's
// RAM file mapped by its clones) count divided among the sharers.
func PSSMiB(pid int) float64 { return procField("/proc/"+strconv.Itoa(pid)+"/smaps_rollup", "Pss") }

// MemAvailableMiB is the host's available memory.
func MemAvailableMiB() float64 { return procField("/proc/meminfo", "MemAvailable") }

// AnonymousMiB is a process's anonymous memory: for QEMU, the guest pages it holds a copy of
// (written, or copied from a snapshot's file on write), not those still mapped from a file.
func AnonymousMiB(pid int) float64 {
	return procField("/proc/"+strconv.Itoa(pid)+"/smaps_rollup", "Anonymous")
}
