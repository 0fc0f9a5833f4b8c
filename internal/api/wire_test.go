package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/pkg/client"
)

// The answers' JSON, byte for byte: E2B's SDKs read these field names, and omitempty decides
// which of them a client sees at all.
func TestWireShapes(t *testing.T) {
	a := &API{cfg: Config{Domain: "cell.test"}}
	bare := &API{}
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	full := manager.Info{Sandbox: store.Sandbox{ID: "sb1", TeamID: "team-a", TemplateID: "base", State: "running",
		Metadata: map[string]string{"k": "v"}, EnvVars: map[string]string{"SECRET": "s"}, CPUs: 2, MemoryMiB: 512, DiskMiB: 2048,
		EnvdToken: "tok", AllowInternet: true, StartedAt: start, EndAt: start.Add(time.Hour), PID: 42, Seq: 7,
		Network:      store.Network{AllowOut: []string{"1.2.3.4"}, DenyOut: []string{"0.0.0.0/0"}, PrivateTraffic: true, MaskRequestHost: "h"},
		TrafficToken: "traffic", Timeout: time.Minute}}
	plain := manager.Info{Sandbox: store.Sandbox{ID: "sb2", TemplateID: "base", State: "paused", StartedAt: start, EndAt: start}}
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"detail", a.detail(full, true), `{"templateID":"base","sandboxID":"sb1","clientID":"cell","startedAt":"2026-01-02T02:04:05Z","endAt":"2026-01-02T03:04:05Z","envdVersion":"0.6.4","envdAccessToken":"tok","domain":"cell.test","cpuCount":2,"memoryMB":512,"diskSizeMB":2048,"metadata":{"k":"v"},"state":"running","allowInternetAccess":true,"network":{"allowOut":["1.2.3.4"],"denyOut":["0.0.0.0/0"],"allowPublicTraffic":false,"maskRequestHost":"h"},"volumeMounts":[]}`},
		{"list item", a.detail(full, false), `{"templateID":"base","sandboxID":"sb1","clientID":"cell","startedAt":"2026-01-02T02:04:05Z","endAt":"2026-01-02T03:04:05Z","envdVersion":"0.6.4","domain":"cell.test","cpuCount":2,"memoryMB":512,"diskSizeMB":2048,"metadata":{"k":"v"},"state":"running","allowInternetAccess":true,"network":{"allowOut":["1.2.3.4"],"denyOut":["0.0.0.0/0"],"allowPublicTraffic":false,"maskRequestHost":"h"},"volumeMounts":[]}`},
		{"plain detail", bare.detail(plain, true), `{"templateID":"base","sandboxID":"sb2","clientID":"cell","startedAt":"2026-01-02T02:04:05Z","endAt":"2026-01-02T02:04:05Z","envdVersion":"0.6.4","domain":null,"cpuCount":0,"memoryMB":0,"diskSizeMB":0,"metadata":{},"state":"paused","allowInternetAccess":false,"network":{"allowPublicTraffic":true},"volumeMounts":[]}`},
		{"sandbox", a.sandboxResponse(full), `{"templateID":"base","sandboxID":"sb1","clientID":"cell","envdVersion":"0.6.4","envdAccessToken":"tok","trafficAccessToken":"traffic","domain":"cell.test"}`},
		{"plain sandbox", bare.sandboxResponse(plain), `{"templateID":"base","sandboxID":"sb2","clientID":"cell","envdVersion":"0.6.4","domain":null}`},
		{"snapshot", snapshotResponse(manager.SnapshotInfo{ID: "snap", Name: "n"}), `{"snapshotID":"snap","names":["n"]}`},
		{"unnamed snapshot", snapshotResponse(manager.SnapshotInfo{ID: "snap"}), `{"snapshotID":"snap","names":[]}`},
	} {
		got, err := json.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
	srv, _, _ := setup(t)
	if h := call(t, srv, "GET", "/health", "", "", nil); h.status != 200 || h.raw != `{"pools":{},"status":"ok"}`+"\n" {
		t.Errorf("health: %d %s", h.status, h.raw)
	}
	w := httptest.NewRecorder()
	writeError(w, 409, "busy")
	if got := strings.TrimSpace(w.Body.String()); got != `{"code":409,"message":"busy"}` || w.Code != 409 {
		t.Errorf("error: %d %s", w.Code, got)
	}
}

// createRecorder is a runtime whose boots fail after keeping what they were asked for.
type createRecorder struct {
	unreachable
	opts chan sandbox.Options
}

func (c createRecorder) Boot(_ context.Context, opts sandbox.Options) (manager.Instance, error) {
	c.opts <- opts
	return nil, errors.New("no VMs in this test")
}

// Cell's Go client and the API agree on the shapes between them: what the client sends is what
// the server reads, and the server's errors reach the client's callers.
func TestClientAgainstTheAPI(t *testing.T) {
	rt := createRecorder{unreachable: unreachable{t}, opts: make(chan sandbox.Options, 1)}
	srv, key, _, _ := setupRuntime(t, rt)
	c := client.New(srv.URL, key)
	ctx := t.Context()

	off := false
	_, err := c.Create(ctx, client.CreateOptions{Template: "base", Timeout: 90 * time.Second, Envs: map[string]string{"A": "1"},
		DiskSizeMB: 3072, Internet: &off, Network: &client.Network{DenyOut: []string{"10.0.0.0/8"}}})
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 500 || !errorIDRE.MatchString(apiErr.Message) {
		t.Fatalf("create with a failing boot: %v", err)
	}
	opts := <-rt.opts
	if opts.Template != "base" || opts.DiskMiB != 3072 || opts.Init == nil || opts.Init.EnvVars["A"] != "1" ||
		opts.Net == nil || opts.Net.Policy().Internet || !slices.Equal(opts.Net.Policy().DenyOut, []string{"10.0.0.0/8"}) {
		t.Fatalf("the server read the client's create as %+v", opts)
	}
	// A policy the server refuses: the client's network field reached it.
	_, err = c.Create(ctx, client.CreateOptions{Network: &client.Network{DenyOut: []string{"example.com"}}})
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Message, "example.com") {
		t.Fatalf("create with a bad deny list: %v", err)
	}

	if list, err := c.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("list: %v %v", list, err)
	}
	for name, call := range map[string]func() error{
		"get":      func() error { _, err := c.Get(ctx, "nope"); return err },
		"connect":  func() error { _, err := c.Connect(ctx, "nope"); return err },
		"kill":     func() error { return c.Kill(ctx, "nope") },
		"timeout":  func() error { return c.SetTimeout(ctx, "nope", time.Minute) },
		"pause":    func() error { return c.Pause(ctx, "nope", true) },
		"resume":   func() error { return c.Resume(ctx, "nope", time.Minute) },
		"network":  func() error { return c.UpdateNetwork(ctx, "nope", client.NetworkUpdate{Internet: &off}) },
		"snapshot": func() error { _, err := c.Snapshot(ctx, "nope", "name"); return err },
		"fork":     func() error { _, err := c.Fork(ctx, "nope", 2, time.Minute); return err },
	} {
		if err := call(); !client.IsNotFound(err) || !strings.Contains(err.Error(), "nope") {
			t.Errorf("%s of an unknown sandbox: %v", name, err)
		}
	}
}
