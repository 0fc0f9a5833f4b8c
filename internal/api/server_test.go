package api

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/manager"
)

// startServer serves h as cell serve does (NewServer on a LimitListener of n connections) on a
// real loopback listener, with idle connections closed after idle.
func startServer(t *testing.T, h http.Handler, n int, idle time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, slog.New(slog.DiscardHandler))
	srv.IdleTimeout = idle
	go func() { _ = srv.Serve(LimitListener(ln, n)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// get sends one keep-alive request on c and reads the answer's status line, within d.
func get(c net.Conn, d time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.Status, nil
}

// The server holds at most its cap of connections: one more is not served until one closes.
func TestServerConnectionCap(t *testing.T) {
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }), 2, time.Minute)
	var conns []net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		conns = append(conns, c)
		if i < 2 {
			if st, err := get(c, 5*time.Second); err != nil || st != "204 No Content" {
				t.Fatalf("connection %d: %q %v", i, st, err)
			}
		}
	}
	// The third connection is in the listen queue: its request is not answered...
	if st, err := get(conns[2], 300*time.Millisecond); err == nil {
		t.Fatalf("a connection over the cap was served: %s", st)
	}
	// ...until one of the others closes; then it is.
	_ = conns[0].Close()
	_ = conns[2].SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conns[2]), nil)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("the waiting connection after one closed: %v %v", resp, err)
	}
}

// A kept-alive connection that sends nothing more is closed after the idle time, and frees its
// place under the cap.
func TestServerClosesIdleConnections(t *testing.T) {
	if srv := NewServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler)); srv.IdleTimeout <= 0 || srv.ReadHeaderTimeout <= 0 {
		t.Fatalf("the API server has idle timeout %v, header timeout %v", srv.IdleTimeout, srv.ReadHeaderTimeout)
	}
	// The same server, with a shorter idle time for the test.
	addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }), 1, 200*time.Millisecond)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if st, err := get(c, 5*time.Second); err != nil || st != "204 No Content" {
		t.Fatalf("first request: %q %v", st, err)
	}
	t0 := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %d %v, want the server to close it", n, err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("closed after %v", d)
	}
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c2.Close() }()
	if st, err := get(c2, 5*time.Second); err != nil || st != "204 No Content" {
		t.Fatalf("a new connection after the idle one closed: %q %v", st, err)
	}
}

// A REST body that stops coming is answered 408 after the body time, not held forever; a
// handler that then runs long is not cut by the deadline.
func TestRESTBodyTime(t *testing.T) {
	srv, key, _, _ := setupRuntime(t, unreachable{t}, func(a *API) { a.bodyTime = 300 * time.Millisecond })
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "POST /sandboxes/abc123/pause HTTP/1.1\r\nHost: x\r\nX-API-KEY: " + key +
		"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"memory\": "
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "request body") {
		t.Fatalf("a stalled body: %d %s", resp.StatusCode, body)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("answered after %v", d)
	}
	// A whole body within the time, then a slow handler (a pause takes seconds): not cut.
	if a := call(t, srv, "POST", "/sandboxes/abc123/pause", key, `{"memory": true}`, nil); a.status != 404 {
		t.Fatalf("a normal request after: %d %s", a.status, a.raw)
	}
}

// sandboxNets stands in for the manager's network counters of two running sandboxes.
type sandboxNets []manager.SandboxNet

func (s sandboxNets) NetStatsAll() []manager.SandboxNet { return s }

// Metrics name sandboxes (ids are capabilities for their public ports) only to a scraper with
// the token; without a token configured, only the count is served.
func TestMetricsNeedToken(t *testing.T) {
	nets := sandboxNets{{ID: "secretid1", Team: "t1"}, {ID: "secretid2", Team: "t2"}}
	scrape := func(h http.Handler, authz string) (int, string) {
		t.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/metrics", nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	open := MetricsHandler(nets, "")
	code, body := scrape(open, "")
	if code != 200 || !strings.Contains(body, "cell_sandboxes_running 2") || strings.Contains(body, "secretid") {
		t.Fatalf("without a token: %d\n%s", code, body)
	}
	const token = "0123456789abcdef"
	locked := MetricsHandler(nets, token)
	for _, authz := range []string{"", "Bearer", "Bearer wrong", "Bearer " + token[:15], "Basic " + token, token} {
		if code, body := scrape(locked, authz); code != 401 || strings.Contains(body, "secretid") {
			t.Errorf("Authorization %q: %d %s", authz, code, body)
		}
	}
	code, body = scrape(locked, "Bearer "+token)
	if code != 200 || !strings.Contains(body, `cell_sandbox_network_receive_bytes_total{sandbox_id="secretid1",team_id="t1"} 0`) {
		t.Fatalf("with the token: %d\n%s", code, body)
	}
}
