package server

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/pkg/envd"
)

// Metrics reads the guest's resource use; CPU use is measured between successive reads.
type Metrics struct {
	Root string // filesystem whose use is reported

	mu                sync.Mutex
	lastBusy, lastAll uint64
}

func cpuTimes() (busy, all uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, s := range f[1:] {
		n, _ := strconv.ParseUint(s, 10, 64)
		all += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, all, nil
}

func meminfo() (map[string]uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		m[k] = n * 1024
	}
	return m, sc.Err()
}

// Read returns the current report.
func (m *Metrics) Read() (envd.MetricsReport, error) {
	r := envd.MetricsReport{Timestamp: time.Now().Unix(), CPUCount: runtime.NumCPU()}
	busy, all, err := cpuTimes()
	if err != nil {
		return r, err
	}
	m.mu.Lock()
	if all > m.lastAll {
		r.CPUUsedPct = 100 * float64(busy-m.lastBusy) / float64(all-m.lastAll)
	}
	m.lastBusy, m.lastAll = busy, all
	m.mu.Unlock()
	mi, err := meminfo()
	if err != nil {
		return r, err
	}
	r.MemTotal = mi["MemTotal"]
	r.MemUsed = mi["MemTotal"] - mi["MemAvailable"]
	r.MemCache = mi["Cached"]
	root := m.Root
	if root == "" {
		root = "/"
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return r, fmt.Errorf("statfs %s: %w", root, err)
	}
	r.DiskTotal = st.Blocks * uint64(st.Bsize)
	r.DiskUsed = (st.Blocks - st.Bfree) * uint64(st.Bsize)
	return r, nil
}
