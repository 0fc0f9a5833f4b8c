package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/manager"
)

// guest stands in for the manager's lookup of one running sandbox, "sb1", whose envd and exposed
// port 8000 are httptest servers: the guest side, hostile by definition, is the boundary broken
// on purpose.
type guest struct {
	envd, port *httptest.Server
	envdHTTP   *http.Client
	traffic    string
}

const guestID = "sb1"

func newGuest(t *testing.T, envd, port http.Handler) *guest {
	t.Helper()
	g := &guest{envd: httptest.NewServer(envd), port: httptest.NewServer(port)}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", g.envd.Listener.Addr().String())
	}}
	g.envdHTTP = &http.Client{Transport: tr}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		g.envd.Close()
		g.port.Close()
	})
	return g
}

func (g *guest) Envd(id string) (*http.Client, error) {
	if id != guestID {
		return nil, fmt.Errorf("%w: sandbox %q", manager.ErrNotFound, id)
	}
	return g.envdHTTP, nil
}

func (g *guest) Port(id string, _ uint16) (manager.PortTarget, error) {
	if id != guestID {
		return manager.PortTarget{}, fmt.Errorf("%w: sandbox %q", manager.ErrNotFound, id)
	}
	return manager.PortTarget{TrafficToken: g.traffic, Dial: func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", g.port.Listener.Addr().String())
	}}, nil
}

func (g *guest) Get(string, string) (manager.Info, error)   { return manager.Info{}, nil }
func (g *guest) FindRunning(func(token string) bool) string { return "" }

// proxyServer serves the API with g as its sandboxes and returns it with its proxy.
func proxyServer(t *testing.T, g *guest) (*httptest.Server, *proxy) {
	t.Helper()
	a := New(Config{})
	a.proxy = newProxy(g, "cell.test", nil)
	t.Cleanup(a.proxy.ports.CloseIdleConnections)
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return srv, a.proxy
}

// recordHeaders is a guest server that hands on each request's headers.
func recordHeaders(seen chan<- http.Header) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.WriteHeader(http.StatusNoContent)
	})
}

// The guest never sees the client's API key, in X-API-KEY or in Authorization (Bearer or
// inside Basic credentials), nor the traffic token; a port never sees envd's access token.
// What it needs reaches it: envd's access token and E2B's Basic user name for envd, the
// client's own Authorization and cookies for a server in the sandbox.
func TestProxyStripsCredentials(t *testing.T) {
	envdSeen, portSeen := make(chan http.Header, 10), make(chan http.Header, 10)
	g := newGuest(t, recordHeaders(envdSeen), recordHeaders(portSeen))
	srv, _ := proxyServer(t, g)
	key := "e2b_" + strings.Repeat("0123456789", 4)
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	send := func(hdr map[string]string, port string, host string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/files?path=x", nil)
		if host != "" {
			req.Host = host
		} else {
			req.Header.Set(SandboxIDHeader, guestID)
			req.Header.Set(SandboxPortHeader, port)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("proxied request: %d", resp.StatusCode)
		}
	}
	common := map[string]string{"X-API-KEY": key, TrafficTokenHeader: "traffic-secret", "X-Access-Token": "envd-token", "Cookie": "session=1"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for k, v := range common {
			m[k] = v
		}
		return m
	}
	for _, c := range []struct {
		name, authz, wantAuthz string
	}{
		{"E2B's Basic user", basic("user", ""), basic("user", "")},
		{"key as Bearer", "Bearer " + key, ""},
		{"key in Basic", basic(key, ""), ""},
		{"key as Basic password", basic("user", key), ""},
	} {
		for _, route := range []struct {
			name, port, host string
			seen             chan http.Header
		}{
			{"envd", "49983", "", envdSeen},
			{"port", "8000", "", portSeen},
			{"port by host", "", "8000-" + guestID + ".cell.test", portSeen},
		} {
			send(with("Authorization", c.authz), route.port, route.host)
			h := <-route.seen
			envd := route.name == "envd"
			if got := h.Get("Authorization"); got != c.wantAuthz {
				t.Errorf("%s to %s: the guest got Authorization %q, want %q", c.name, route.name, got, c.wantAuthz)
			}
			for _, name := range []string{"X-Api-Key", TrafficTokenHeader} {
				if v := h.Values(name); len(v) > 0 {
					t.Errorf("%s to %s: the guest got %s: %q", c.name, route.name, name, v)
				}
			}
			if got := h.Get("X-Access-Token"); (got == "envd-token") != envd {
				t.Errorf("%s to %s: the guest got X-Access-Token %q", c.name, route.name, got)
			}
			if got := h.Get("Cookie"); got != "session=1" {
				t.Errorf("%s to %s: the guest got Cookie %q", c.name, route.name, got)
			}
			for name, v := range h {
				if strings.Contains(strings.Join(v, " "), key) {
					t.Errorf("%s to %s: the key is in %s", c.name, route.name, name)
				}
			}
		}
	}
	// The client's own credentials for a server in the sandbox pass.
	send(map[string]string{"Authorization": basic("alice", "pw")}, "8000", "")
	if got := (<-portSeen).Get("Authorization"); got != basic("alice", "pw") {
		t.Errorf("the port got Authorization %q", got)
	}
}

func TestTokenMatches(t *testing.T) {
	want := "0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, c := range []struct {
		got, want string
		ok        bool
	}{
		{want, want, true},
		{strings.Replace(want, "0", "1", 1), want, false},
		{"", want, false},
		{want[:47], want, false},
		{want + "0", want, false},
		{"", "", false}, // no token set: nothing matches (the caller decides whether one is needed)
	} {
		if got := tokenMatches(c.got, c.want); got != c.ok {
			t.Errorf("tokenMatches(%q, %q) = %v", c.got, c.want, got)
		}
	}
}

// A private sandbox's port needs the traffic token: right passes, wrong, empty or cut does not.
func TestProxyTrafficToken(t *testing.T) {
	g := newGuest(t, http.NotFoundHandler(), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	g.traffic = "0123456789abcdef0123456789abcdef0123456789abcdef"
	srv, _ := proxyServer(t, g)
	for tok, want := range map[string]int{g.traffic: 204, "": 403, g.traffic[:47]: 403, strings.ToUpper(g.traffic): 403} {
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		req.Header.Set(SandboxIDHeader, guestID)
		req.Header.Set(SandboxPortHeader, "8000")
		if tok != "" {
			req.Header.Set(TrafficTokenHeader, tok)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("token %q: %d, want %d", tok, resp.StatusCode, want)
		}
	}
}

// hold is a guest server whose answers stream until the request ends (the client goes away).
type hold struct{ started chan struct{} }

func (h hold) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "streaming\n")
	w.(http.Flusher).Flush()
	h.started <- struct{}{}
	<-r.Context().Done()
}

// waitInFlight waits until the proxy has total requests in flight.
func waitInFlight(t *testing.T, p *proxy, total int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _, _ := p.streams.inFlight(guestID)
		if n == total {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests in flight, want %d", n, total)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Proxied streams are bounded per sandbox (envd and ports each: 429) and in total (503), and a
// place is given back however the request ends: the client going away, the guest failing.
func TestProxyStreamLimits(t *testing.T) {
	h := hold{started: make(chan struct{}, 10)}
	g := newGuest(t, h, h)
	srv, p := proxyServer(t, g)
	p.streams = newStreamLimits(3, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(port string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/stream", nil)
		req.Header.Set(SandboxIDHeader, guestID)
		req.Header.Set(SandboxPortHeader, port)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var streams []*http.Response
	for _, port := range []string{"49983", "49983", "8000"} {
		resp := open(port)
		if resp.StatusCode != 200 {
			t.Fatalf("stream to %s: %d", port, resp.StatusCode)
		}
		<-h.started
		streams = append(streams, resp)
	}
	for port, want := range map[string]int{"49983": 429, "8000": 503} {
		resp := open(port)
		if resp.StatusCode != want {
			_ = resp.Body.Close() // a stream let through: cut it
			t.Errorf("one more to %s: %d, want %d", port, resp.StatusCode, want)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if !strings.Contains(string(body), "at most") || resp.Header.Get("Retry-After") == "" {
			t.Errorf("one more to %s: %d %s", port, resp.StatusCode, body)
		}
	}
	if total, envd, port := p.streams.inFlight(guestID); total != 3 || envd != 2 || port != 1 {
		t.Fatalf("in flight: %d (envd %d, port %d)", total, envd, port)
	}
	// The clients go away without reading to the end: every place comes back.
	cancel()
	for _, resp := range streams {
		_ = resp.Body.Close()
	}
	waitInFlight(t, p, 0)
	if total, envd, port := p.streams.inFlight(guestID); total != 0 || envd != 0 || port != 0 {
		t.Fatalf("after the clients left: %d (envd %d, port %d)", total, envd, port)
	}
	// A guest that fails (its server gone): the place comes back too.
	g.port.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Header.Set(SandboxIDHeader, guestID)
	req.Header.Set(SandboxPortHeader, "8000")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("closed port: %d", resp.StatusCode)
	}
	waitInFlight(t, p, 0)
}

// slowBody sends pieces with a pause before each.
type slowBody struct {
	pieces int
	pause  time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.pieces == 0 {
		return 0, io.EOF
	}
	time.Sleep(b.pause)
	b.pieces--
	return copy(p, "0123456789"), nil
}

// A proxied body may take as long as it keeps coming; one that stops coming fails after the idle
// time, and its place is given back.
func TestProxyBodyIdle(t *testing.T) {
	var mu sync.Mutex
	var got []string
	g := newGuest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, fmt.Sprintf("%d %v", len(b), err))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}), http.NotFoundHandler())
	srv, p := proxyServer(t, g)
	p.bodyIdle = 300 * time.Millisecond
	post := func(body io.Reader) int {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+"/files?path=/tmp/x", body)
		req.Header.Set(SandboxIDHeader, guestID)
		resp, err := srv.Client().Do(req)
		if err != nil {
			return -1 // the proxy may cut the connection while the client still sends
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	// 10 pieces 100 ms apart: 1 s in all, more than the idle time, never idle that long.
	if code := post(&slowBody{pieces: 10, pause: 100 * time.Millisecond}); code != http.StatusNoContent {
		t.Fatalf("a slow, steady upload: %d", code)
	}
	mu.Lock()
	if len(got) != 1 || got[0] != "100 <nil>" {
		t.Fatalf("the guest got %q", got)
	}
	mu.Unlock()
	// A client that sends a piece, then nothing for a second.
	pr, pw := io.Pipe()
	t.Cleanup(func() { _ = pw.Close() }) // before the server's Close, which waits for requests
	done := make(chan int, 1)
	go func() { done <- post(pr) }()
	_, _ = pw.Write([]byte("start"))
	select {
	case code := <-done:
		if code == http.StatusNoContent {
			t.Fatalf("a stalled upload succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a stalled upload was not cut")
	}
	_ = pw.Close()
	waitInFlight(t, p, 0)
}
