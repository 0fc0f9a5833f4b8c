package api

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

// TestCreateRefusedWhenTheHostDiskIsFull: a create whose disk the host's disk cannot take (free
// space minus the reserve) is answered 507 before a VM is asked for, and the daemon goes on
// serving. The free-space reading is the boundary broken on purpose.
func TestCreateRefusedWhenTheHostDiskIsFull(t *testing.T) {
	var free atomic.Uint64
	free.Store(3 << 30) // 3 GiB free, 2 GiB of it kept: 1 GiB for sandboxes
	guard := &vmm.DiskGuard{Dir: t.TempDir(), Reserve: vmm.Reserve{Bytes: 2 << 30, Percent: 5},
		Space: func(string) (uint64, uint64, error) { return free.Load(), 20 << 30, nil }}
	rt := &bootRecorder{unreachable: unreachable{t}}
	mgr, keys, key, _ := deps(t, rt, func(c *manager.Config) { c.Disk = guard })
	srv := httptest.NewServer(New(Config{Manager: mgr, Keys: keys}))
	t.Cleanup(srv.Close)

	for _, c := range []struct {
		body    string
		status  int
		mention string
	}{
		{`{"templateID":"base"}`, 507, "does not fit on the host's disk"},
		{`{"templateID":"base","diskSizeMB":4096}`, 507, "4GiB"},
		{`{"templateID":"base","diskSizeMB":1024}`, 400, "diskSizeMB"},
		{`{"templateID":"base","diskSizeMB":0}`, 400, "diskSizeMB"},
		{`{"templateID":"base","diskSizeMB":-1}`, 400, "diskSizeMB"},
		{`{"templateID":"base","diskSizeMB":1099511627776}`, 400, "diskSizeMB"},
		{`{"templateID":"base","diskSizeMB":"big"}`, 400, "diskSizeMB"},
	} {
		a := call(t, srv, "POST", "/sandboxes", key, c.body, nil)
		if a.status != c.status || a.body["code"] != float64(c.status) || !strings.Contains(a.raw, c.mention) {
			t.Errorf("%s: %d %s; want %d mentioning %q", c.body, a.status, a.raw, c.status, c.mention)
		}
	}
	// The 507 says why, in the operator's terms.
	a := call(t, srv, "POST", "/v2/sandboxes", key, `{"templateID":"base"}`, nil)
	for _, want := range []string{"insufficient storage", "2GiB", "3GiB free", "min free disk 2GiB,5%"} {
		if !strings.Contains(a.raw, want) {
			t.Errorf("the 507 does not say %q: %s", want, a.raw)
		}
	}
	// Nothing was recorded for the refused creates, and everything else is served.
	if a := call(t, srv, "GET", "/v2/sandboxes", key, "", nil); a.status != 200 || strings.TrimSpace(a.raw) != "[]" {
		t.Errorf("list after refused creates: %d %s", a.status, a.raw)
	}
	if a := call(t, srv, "GET", "/health", "", "", nil); a.status != 200 {
		t.Errorf("health: %d %s", a.status, a.raw)
	}
	if a := call(t, srv, "GET", "/sandboxes/nosuch", key, "", nil); a.status != 404 {
		t.Errorf("get: %d %s", a.status, a.raw)
	}
	if d := rt.booted(); len(d) != 0 {
		t.Fatalf("refused creates reached the runtime: %v", d)
	}
	// With room, creates go on to boot, with their disk size.
	free.Store(8 << 30)
	call(t, srv, "POST", "/sandboxes", key, `{"templateID":"base"}`, nil)
	call(t, srv, "POST", "/sandboxes", key, `{"templateID":"base","diskSizeMB":3072}`, nil)
	if a := call(t, srv, "POST", "/sandboxes", key, `{"templateID":"base","diskSizeMB":8192}`, nil); a.status != 507 {
		t.Errorf("an 8 GiB disk with 6 GiB to spare: %d %s", a.status, a.raw)
	}
	if d := rt.booted(); !slices.Equal(d, []int{sandbox.DefaultDiskMiB, 3072}) {
		t.Fatalf("the runtime booted disks of %v MiB, want [2048 3072]", d)
	}
}

// bootRecorder is a runtime whose boots fail after noting the disk size asked for.
type bootRecorder struct {
	unreachable
	mu    sync.Mutex
	disks []int
}

func (b *bootRecorder) booted() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.disks)
}

func (b *bootRecorder) Boot(_ context.Context, opts sandbox.Options) (manager.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.disks = append(b.disks, opts.DiskMiB)
	return nil, errors.New("no VMs in this test")
}
