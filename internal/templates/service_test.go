package templates

import (
	"context"
	"errors"
	"io"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/ociimage"
	"github.com/cellhq/cell/internal/store"
)

// stuckMachines never finishes starting a VM until released: builds stay under way.
type stuckMachines struct{ release chan struct{} }

func (m stuckMachines) Start(ctx context.Context, _ string, _, _ int) (build.VM, error) {
	select {
	case <-m.release:
		return nil, errors.New("released")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
func (stuckMachines) Save(context.Context, build.VM, string, string, []byte) (string, error) {
	return "", errors.New("no")
}
func (stuckMachines) Layer(string) ([]byte, bool) { return nil, false }

type noSnapshots struct{}

func (noSnapshots) Base() (string, string, error) { return "base", "/images/templates/base/fp", nil }
func (noSnapshots) InUse(string) []string         { return nil }
func (noSnapshots) DiskMiB(string) int            { return 0 }
func (noSnapshots) Layers() []Layer               { return nil }
func (noSnapshots) RemoveLayer(string) error      { return errors.New("no layers") }

func newService(t *testing.T, m build.Machines, maxQueue int) (*Service, *store.Store) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "cell.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	key, err := UploadKey(filepath.Join(dir, "upload.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Store: st, Machines: m, Snapshots: noSnapshots{}, Dir: filepath.Join(dir, "builds"), Key: key, MaxBuilds: 1, MaxQueue: maxQueue})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, st
}

func TestUploadURLsAreBoundToTeamTemplateAndHash(t *testing.T) {
	s, _ := newService(t, stuckMachines{}, 1)
	ctx := context.Background()
	c, err := s.Create(ctx, CreateRequest{Team: "team-a", Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	hash := strings.Repeat("c", 64)
	present, u, err := s.Files(ctx, "team-a", c.TemplateID, hash, "http://cell:3000")
	if err != nil || present || !strings.HasPrefix(u, "http://cell:3000/templates/"+c.TemplateID+"/files/"+hash+"?") {
		t.Fatalf("%v %v %q", present, err, u)
	}
	if _, _, err := s.Files(ctx, "team-b", c.TemplateID, hash, "http://cell"); !errors.Is(err, manager.ErrNotFound) {
		t.Fatalf("another team's template: %v", err)
	}
	pu, _ := url.Parse(u)
	q := pu.Query()
	put := func(tid, h string, q url.Values, body string, n int64) error {
		return s.Upload(ctx, tid, h, q, strings.NewReader(body), n)
	}
	for name, err := range map[string]error{
		"another hash":     put(c.TemplateID, strings.Repeat("d", 64), q, "x", 1),
		"another template": put("other", hash, q, "x", 1),
		"another team":     put(c.TemplateID, hash, url.Values{"team": {"team-b"}, "expires": q["expires"], "signature": q["signature"]}, "x", 1),
		"expired": put(c.TemplateID, hash, func() url.Values {
			exp := time.Now().Add(-time.Minute).Unix()
			return url.Values{"team": {"team-a"}, "expires": {strconv.FormatInt(exp, 10)}, "signature": {s.sign("team-a", c.TemplateID, hash, exp)}}
		}(), "x", 1),
	} {
		if !errors.Is(err, ErrUploadAuth) {
			t.Errorf("%s: %v, want ErrUploadAuth", name, err)
		}
	}
	if err := put(c.TemplateID, hash, q, "short", 10); !errors.Is(err, manager.ErrInvalid) {
		t.Errorf("a body shorter than its Content-Length: %v", err)
	}
	if err := put(c.TemplateID, hash, q, "longer than said", 4); !errors.Is(err, manager.ErrInvalid) {
		t.Errorf("a body longer than its Content-Length: %v", err)
	}
	if present, _, _ := s.Files(ctx, "team-a", c.TemplateID, hash, "http://cell"); present {
		t.Fatal("a refused upload was kept")
	}
	if err := put(c.TemplateID, hash, q, "tar", 3); err != nil {
		t.Fatal(err)
	}
	if present, _, _ := s.Files(ctx, "team-a", c.TemplateID, hash, "http://cell"); !present {
		t.Fatal("the upload is not there")
	}
	rc, err := io.ReadAll(must(s.openUpload("team-a", hash)))
	if err != nil || string(rc) != "tar" {
		t.Fatalf("%q %v", rc, err)
	}
}

func TestQueueBoundAndRecover(t *testing.T) {
	m := stuckMachines{release: make(chan struct{})}
	s, st := newService(t, m, 1)
	ctx := context.Background()
	var builds []Created
	for range 3 {
		c, err := s.Create(ctx, CreateRequest{Team: "team-a", Name: "app"})
		if err != nil {
			t.Fatal(err)
		}
		builds = append(builds, c)
	}
	for i, c := range builds {
		err := s.Start(ctx, "team-a", c.TemplateID, c.BuildID, build.Spec{})
		if i < 2 && err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
		if i == 2 && !errors.Is(err, ErrBusy) {
			t.Fatalf("a third build with one running and one queued: %v, want ErrBusy", err)
		}
	}
	if err := s.Start(ctx, "team-a", builds[0].TemplateID, builds[0].BuildID, build.Spec{}); !errors.Is(err, manager.ErrConflict) {
		t.Fatalf("starting a build twice: %v", err)
	}
	if err := s.Start(ctx, "team-b", builds[2].TemplateID, builds[2].BuildID, build.Spec{}); !errors.Is(err, manager.ErrNotFound) {
		t.Fatalf("another team's build: %v", err)
	}
	// The daemon stops with builds under way: the next one finds them failed, with a reason.
	s.Close()
	s2, err := New(Config{Store: st, Machines: m, Snapshots: noSnapshots{}, Dir: s.cfg.Dir, Key: s.cfg.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range builds {
		stt, err := s2.Status(ctx, "team-a", c.TemplateID, c.BuildID, 0)
		if err != nil || stt.Status != store.BuildError || stt.Reason == nil || !strings.Contains(stt.Reason.Message, "stopped") {
			t.Fatalf("build %s after a restart: %+v %v", c.BuildID, stt, err)
		}
		if stt.LogEntries == nil || stt.Logs == nil {
			t.Fatal("null log arrays (the SDK maps over them)")
		}
	}
	if _, _, err := s2.Resolve(ctx, "team-a", "app"); !errors.Is(err, manager.ErrNotFound) {
		t.Fatalf("a template with only failed builds resolves: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// fakeLayers is a layer cache: a layer whose name is in usedBy[x] cannot go before x has.
type fakeLayers struct {
	noSnapshots
	layers  []Layer
	usedBy  map[string]string
	removed []string
}

func (f *fakeLayers) Layers() []Layer { return append([]Layer(nil), f.layers...) }
func (f *fakeLayers) RemoveLayer(name string) error {
	for child, parent := range f.usedBy {
		if parent == name && !slices.Contains(f.removed, child) {
			return errors.New("in use")
		}
	}
	f.removed = append(f.removed, name)
	return nil
}

func TestEvictionIsLRUAndSparesWhatIsUsed(t *testing.T) {
	now := time.Now()
	f := &fakeLayers{layers: []Layer{
		{Name: "old-parent", Bytes: 100, Used: now.Add(-5 * time.Hour)},
		{Name: "old-child", Bytes: 100, Used: now.Add(-4 * time.Hour)},
		{Name: "tagged", Bytes: 100, Used: now.Add(-6 * time.Hour)},
		{Name: "recent", Bytes: 100, Used: now.Add(-time.Minute)},
		{Name: "middle", Bytes: 100, Used: now.Add(-time.Hour)},
	}, usedBy: map[string]string{"old-child": "old-parent"}}
	s, st := newService(t, stuckMachines{}, 1)
	s.cfg.Snapshots = f
	ctx := context.Background()
	// A template whose tag points at "tagged".
	c, err := s.Create(ctx, CreateRequest{Team: "team-a", Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.BuildByID(ctx, c.TemplateID, c.BuildID)
	if err != nil {
		t.Fatal(err)
	}
	b.Status, b.Snapshot = store.BuildReady, "tagged"
	if err := st.PutBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := st.SetTag(ctx, c.TemplateID, "default", b.ID, now); err != nil {
		t.Fatal(err)
	}
	s.evict(ctx, 250)
	// 500 bytes, 250 allowed: the oldest that can go, the child before its parent.
	if want := []string{"old-child", "old-parent", "middle"}; !slices.Equal(f.removed, want) {
		t.Fatalf("removed %v, want %v", f.removed, want)
	}
	f.removed = nil
	s.evict(ctx, -1)
	if len(f.removed) != 0 {
		t.Fatal("evicted with no budget set")
	}
}

func TestBuildsNeverStartedAreGivenUp(t *testing.T) {
	s, _ := newService(t, stuckMachines{}, 1)
	ctx := context.Background()
	old, err := s.Create(ctx, CreateRequest{Team: "team-a", Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.active[old.BuildID].created = time.Now().Add(-2 * waitingTTL)
	s.mu.Unlock()
	if _, err := s.Create(ctx, CreateRequest{Team: "team-a", Name: "other"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status(ctx, "team-a", old.TemplateID, old.BuildID, 0)
	if err != nil || st.Status != store.BuildError || !strings.Contains(st.Reason.Message, "did not come") {
		t.Fatalf("%+v %v", st, err)
	}
	if err := s.Start(ctx, "team-a", old.TemplateID, old.BuildID, build.Spec{}); !errors.Is(err, manager.ErrConflict) {
		t.Fatalf("starting a build given up: %v", err)
	}
}

// lockingMachines counts the cross-process locks taken.
type lockingMachines struct {
	stuckMachines
	locks *int
}

func (m lockingMachines) Lock(context.Context, string) (func(), error) {
	*m.locks++
	return func() {}, nil
}

// TestEvictingMachinesKeepTheLayerLock: the service's wrapper around the machines (eviction on
// a full disk) still offers build.Run their cross-process layer lock.
func TestEvictingMachinesKeepTheLayerLock(t *testing.T) {
	n := 0
	s, _ := newService(t, lockingMachines{locks: &n}, 1)
	l, ok := s.cfg.Machines.(build.Locker)
	if !ok {
		t.Fatal("the service's machines hide the layer lock")
	}
	unlock, err := l.Lock(context.Background(), "layer-x")
	if err != nil || n != 1 {
		t.Fatalf("lock: %v, %d locks taken", err, n)
	}
	unlock()
}

// TestImageChecksAtStart: a build from an OCI image is refused at once (400) for a bad
// reference, credentials Cell does not take, or a server that pulls no images.
func TestImageChecksAtStart(t *testing.T) {
	s, _ := newService(t, stuckMachines{}, 1)
	if _, err := s.checkImage(build.Spec{FromImage: "python:3.12"}); !errors.Is(err, manager.ErrInvalid) || !strings.Contains(err.Error(), "does not pull") {
		t.Errorf("no puller: %v", err)
	}
	for _, ref := range []string{"e2bdev/base", "e2bdev/base:latest", ""} {
		if im, err := s.checkImage(build.Spec{FromImage: ref}); im != nil || err != nil {
			t.Errorf("%q: %v %v, want Cell's base image", ref, im, err)
		}
	}
	p, err := ociimage.NewPuller(nil, &netstack.Guard{})
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.Images = &Images{Puller: p}
	for _, spec := range []build.Spec{
		{FromImage: "Bad Ref!"},
		{FromImage: "python:3.12", Registry: []byte(`{"type":"aws"}`)},
		{FromImage: "python:3.12", Registry: []byte(`{"type":"registry","username":"u"}`)},
	} {
		if _, err := s.checkImage(spec); !errors.Is(err, manager.ErrInvalid) {
			t.Errorf("%+v: %v", spec, err)
		}
	}
	im, err := s.checkImage(build.Spec{FromImage: "python:3.12", Registry: []byte(`{"type":"registry","username":"u","password":"p"}`)})
	if err != nil || im == nil || im.creds == nil || im.ref != "python:3.12" {
		t.Errorf("a good one: %+v %v", im, err)
	}
}
