package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/pkg/client"
)

// netServe starts `cell serve` whose sandboxes resolve the test hosts' names (see testHosts).
func netServe(t testing.TB, extra ...string) (*server, *client.Client) {
	t.Helper()
	needTestHosts(t)
	d := newDaemon(t)
	args := append([]string{
		"--dns-host", "allowed.test=" + testHostA,
		"--dns-host", "evil.test=" + testHostA, // the allowed host's address under a name no policy allows
		"--dns-host", "other.test=" + testHostB,
		"--dns-host", "api.wild.test=" + testHostA,
		"--dns-host", "loop.test=127.0.0.2", // the host's loopback, by name
		// The test hosts are on a private network, which sandboxes reach only when allowed.
		"--net-allow-reserved", testHostA, "--net-allow-reserved", testHostB + "/32",
	}, extra...)
	s, c := d.serve(t, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cell serve's log:\n%s", s.logs)
		}
	})
	return s, c
}

// sbx is a sandbox under test with the test CA installed at /tmp/ca.pem.
type sbx struct {
	t  testing.TB
	c  *client.Client
	id string
	sb *client.Sandbox
}

func newSbx(t testing.TB, c *client.Client, o client.CreateOptions) *sbx {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute // E2B's default of 15 s is shorter than some tests
	}
	info, err := c.Create(ctx, o)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { _ = c.Kill(context.Background(), info.SandboxID) })
	return connectSbx(t, c, info.SandboxID)
}

func connectSbx(t testing.TB, c *client.Client, id string) *sbx {
	t.Helper()
	sb, err := c.Connect(context.Background(), id)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	s := &sbx{t: t, c: c, id: id, sb: sb}
	if err := sb.Upload(context.Background(), "/tmp/ca.pem", "user", bytes.NewReader(hosts.caPEM)); err != nil {
		t.Fatalf("uploading the test CA: %v", err)
	}
	return s
}

// run runs cmd in the sandbox and returns its stdout+stderr and exit code.
func (s *sbx) run(cmd string) (string, int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := s.sb.Exec(ctx, cmd, "", nil, &out, &out)
	if err != nil {
		s.t.Fatalf("exec %q in %s: %v", cmd, s.id, err)
	}
	return out.String(), res.ExitCode
}

// ok runs cmd and requires success.
func (s *sbx) ok(cmd string) string {
	s.t.Helper()
	out, code := s.run(cmd)
	if code != 0 {
		s.t.Fatalf("%q exited %d:\n%s", cmd, code, out)
	}
	return out
}

// refused runs cmd (a curl) and requires that it failed fast: a refused or reset connection
// (curl 7, 35, 52, 56) or a name that did not resolve (curl 6), never a timeout.
func (s *sbx) refused(cmd string) {
	s.t.Helper()
	start := time.Now()
	out, code := s.run(cmd)
	switch code {
	case 6, 7, 35, 52, 56:
	default:
		s.t.Fatalf("%q: exit %d, want a refused connection or an unresolved name:\n%s", cmd, code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		s.t.Fatalf("%q took %v: denied connections must be refused quickly", cmd, d)
	}
}

const curl = "curl -sS --max-time 8 --cacert /tmp/ca.pem "

func netMetrics(t *testing.T, srv *server, c *client.Client, id string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.url+"/sandboxes/"+id+"/metrics", nil)
	req.Header.Set("X-API-KEY", c.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var ms []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil || len(ms) != 1 {
		t.Fatalf("metrics: %v %v", err, ms)
	}
	return ms[0]
}

func TestNetworkInternetOff(t *testing.T) {
	srv, c := netServe(t)
	off := false
	s := newSbx(t, c, client.CreateOptions{Internet: &off})
	s.refused(curl + "http://" + testHostA + "/")
	s.refused(curl + "https://allowed.test/")
	if out, code := s.run("getent hosts allowed.test"); code == 0 {
		t.Fatalf("DNS resolved with the internet off: %s", out)
	}
	// UDP: no echo comes back.
	udp := `python3 -c "
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'ping', ('` + testHostA + `', 7))
try: print(s.recv(100)); exit(0)
except Exception as e: print(e); exit(3)"`
	if out, code := s.run(udp); code != 3 {
		t.Fatalf("UDP with the internet off: exit %d %s", code, out)
	}
	// Exposed ports still answer.
	s.ok("mkdir -p /tmp/www && hostname > /tmp/www/id && (nohup python3 -m http.server 8000 --directory /tmp/www >/dev/null 2>&1 &)")
	body := portGet(t, srv, s.id, 8000, "/id", nil, 200)
	if !strings.Contains(body, s.id) {
		t.Fatalf("exposed port answered %q, want the sandbox's hostname", body)
	}
	m := netMetrics(t, srv, c, s.id)
	if m["netDeniedConnections"].(float64) < 2 || m["netBytesOut"].(float64) == 0 {
		t.Fatalf("metrics after denied connections: %v", m)
	}
}

// portGet requests path from a guest port through cell serve (E2B's routing headers) and
// checks the status.
func portGet(t testing.TB, srv *server, id string, port int, path string, hdr http.Header, want int) string {
	t.Helper()
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", srv.url+path, nil)
		req.Header.Set("E2b-Sandbox-Id", id)
		req.Header.Set("E2b-Sandbox-Port", fmt.Sprint(port))
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		body = string(b)
		if resp.StatusCode == want {
			return body
		}
		// The server in the guest may still be starting (502 port not open).
		if resp.StatusCode != http.StatusBadGateway || time.Now().After(deadline) {
			t.Fatalf("GET port %d%s: %d %s, want %d", port, path, resp.StatusCode, body, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestNetworkAllowByDomain(t *testing.T) {
	_, c := netServe(t)
	s := newSbx(t, c, client.CreateOptions{Network: &client.Network{
		DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"allowed.test", "*.wild.test"}}})
	// The allowed name's address, before any lookup made it known: denied.
	s.refused(curl + "http://" + testHostA + "/")
	if out := s.ok(curl + "https://allowed.test/"); !strings.Contains(out, "sni=allowed.test") {
		t.Fatalf("https://allowed.test/: %s", out)
	}
	if out := s.ok(curl + "http://allowed.test/"); !strings.Contains(out, "host=allowed.test") {
		t.Fatalf("http://allowed.test/: %s", out)
	}
	if out := s.ok(curl + "https://api.wild.test/"); !strings.Contains(out, "sni=api.wild.test") {
		t.Fatalf("wildcard: %s", out)
	}
	s.refused(curl + "http://other.test/") // not allowed: no address for it
	// Known now, but a connection admitted by a name rule must name an allowed host.
	s.refused(curl + "http://" + testHostA + "/")
	s.refused(curl + "-H 'Host: evil.test' http://allowed.test/")
	s.refused(curl + "--resolve evil.test:443:" + testHostA + " https://evil.test/")
	s.refused(curl + "--resolve other.test:443:" + testHostA + " https://other.test/")
	// Every request on a keep-alive connection is checked, not only the first.
	keepAlive := `python3 -c "
import socket
s = socket.create_connection(('allowed.test', 80), timeout=5)
s.sendall(b'GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n')
print(s.recv(4096).decode().split('\r\n')[0])
s.sendall(b'GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n')
try: print('second:', s.recv(4096) or 'closed')
except OSError as e: print('second:', e)"`
	if out := s.ok(keepAlive); !strings.Contains(out, "HTTP/1.1 200") || !strings.Contains(out, "second: closed") && !strings.Contains(out, "second: [Errno 104]") {
		t.Fatalf("a second request for a denied host on a keep-alive connection:\n%s", out)
	}
}

func TestNetworkCIDRRulesAndLiveUpdate(t *testing.T) {
	srv, c := netServe(t)
	// allowOut beats denyOut.
	s := newSbx(t, c, client.CreateOptions{Network: &client.Network{DenyOut: []string{"10.200.0.0/24"}, AllowOut: []string{testHostA}}})
	s.ok(curl + "http://" + testHostA + "/")
	s.refused(curl + "http://" + testHostB + "/")
	// denyOut alone.
	s2 := newSbx(t, c, client.CreateOptions{Network: &client.Network{DenyOut: []string{testHostB + "/32"}}})
	s2.ok(curl + "http://" + testHostA + "/")
	s2.refused(curl + "http://" + testHostB + "/")
	// Live: deny A too; new connections follow at once. Then open everything again.
	deny := []string{"10.200.0.0/24"}
	if err := c.UpdateNetwork(context.Background(), s2.id, client.NetworkUpdate{DenyOut: &deny}); err != nil {
		t.Fatal(err)
	}
	s2.refused(curl + "http://" + testHostA + "/")
	none := []string{}
	if err := c.UpdateNetwork(context.Background(), s2.id, client.NetworkUpdate{DenyOut: &none}); err != nil {
		t.Fatal(err)
	}
	s2.ok(curl + "http://" + testHostB + "/")
	// A domain in denyOut is refused, naming the field; nothing is created.
	before, _ := c.List(context.Background())
	_, err := c.Create(context.Background(), client.CreateOptions{Network: &client.Network{DenyOut: []string{"example.com"}}})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "network.denyOut[0]") {
		t.Fatalf("domain in denyOut: %v", err)
	}
	after, _ := c.List(context.Background())
	if len(after) != len(before) {
		t.Fatalf("a refused create left a sandbox: %d -> %d", len(before), len(after))
	}
	bad := []string{"not a cidr"}
	err = c.UpdateNetwork(context.Background(), s2.id, client.NetworkUpdate{DenyOut: &bad})
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("bad live update: %v", err)
	}
	s2.ok(curl + "http://" + testHostB + "/") // the bad update changed nothing
	_ = srv
}

// TestNetworkIsolation: whatever the policy, a sandbox reaches neither the host (its loopback
// services, its own addresses, cell serve) nor link-local addresses nor another sandbox.
func TestNetworkIsolation(t *testing.T) {
	srv, c := netServe(t)
	// Host services: one on every host address, one on the loopback only.
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	port := ln.Addr().(*net.TCPAddr).Port
	lo, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lo.Close() }()
	loPort := lo.Addr().(*net.TCPAddr).Port
	hits := make(chan string, 16)
	for _, l := range []net.Listener{ln, lo} {
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				hits <- conn.RemoteAddr().String()
				_ = conn.Close()
			}
		}()
	}
	_, servePort, _ := net.SplitHostPort(strings.TrimPrefix(srv.url, "http://"))
	a := newSbx(t, c, client.CreateOptions{})
	b := newSbx(t, c, client.CreateOptions{})
	b.ok("(nohup python3 -m http.server 8000 --directory /tmp >/tmp/http.log 2>&1 &)")
	portGet(t, srv, b.id, 8000, "/", nil, 200) // b's server is up
	targets := []string{
		fmt.Sprintf("http://%s:%d/", hosts.hostIP, port),            // the host's own address
		fmt.Sprintf("http://192.168.127.1:%d/", port),               // the gateway
		fmt.Sprintf("http://%s:%s/health", hosts.hostIP, servePort), // cell serve
		"http://169.254.169.254/latest/meta-data/",                  // metadata
		fmt.Sprintf("http://loop.test:%d/", loPort),                 // the host's loopback, by name
		fmt.Sprintf("http://192.168.127.1:%d/", loPort),             // the loopback service via the gateway
		fmt.Sprintf("http://%s:%d/", hosts.hostIP, loPort),
	}
	if ip := primaryIP(); ip != "" {
		targets = append(targets, fmt.Sprintf("http://%s:%d/", ip, port), fmt.Sprintf("http://%s:%s/health", ip, servePort))
	}
	for _, u := range targets {
		a.refused(curl + u)
	}
	// b through the proxy, as the host sees it: a host address, so denied.
	a.refused(curl + fmt.Sprintf("-H 'E2b-Sandbox-Id: %s' -H 'E2b-Sandbox-Port: 8000' http://%s:%s/", b.id, hosts.hostIP, servePort))
	// 192.168.127.2 is a's own address in a's own network: b is not there.
	a.refused(curl + "http://192.168.127.2:8000/")
	if log := b.ok("cat /tmp/http.log"); strings.Count(log, "GET /") != 1 {
		t.Fatalf("b's server saw requests other than the test's own:\n%s", log)
	}
	select {
	case h := <-hits:
		t.Fatalf("the host service was reached from %s", h)
	default:
	}
}

// primaryIP is the host's address on its default route, if any.
func primaryIP() string {
	conn, err := net.Dial("udp", "203.0.113.1:9") // no packet is sent: this only picks a route
	if err != nil {
		return ""
	}
	defer func() { _ = conn.Close() }()
	return conn.LocalAddr().(*net.UDPAddr).IP.String()
}

func TestNetworkResumeAndFork(t *testing.T) {
	srv, c := netServe(t)
	s := newSbx(t, c, client.CreateOptions{})
	s.ok(curl + "https://allowed.test/")
	ctx := context.Background()
	if err := c.Pause(ctx, s.id, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx, s.id, time.Minute); err != nil {
		t.Fatal(err)
	}
	s = connectSbx(t, c, s.id)
	// At once: no DHCP, the interface, route and resolver are as they were.
	if out := s.ok("ip -br addr show eth0; " + curl + "https://allowed.test/"); !strings.Contains(out, "192.168.127.2") || !strings.Contains(out, "sni=allowed.test") {
		t.Fatalf("after resume: %s", out)
	}
	forks := forkSandbox(t, srv, c, s.id, 2)
	f1, f2 := connectSbx(t, c, forks[0]), connectSbx(t, c, forks[1])
	f1.ok(curl + "http://other.test/")
	f2.ok(curl + "http://other.test/")
	// Each fork has its own network: denying f1 leaves f2 alone.
	off := false
	if err := c.UpdateNetwork(ctx, f1.id, client.NetworkUpdate{Internet: &off}); err != nil {
		t.Fatal(err)
	}
	f1.refused(curl + "http://" + testHostB + "/")
	f2.ok(curl + "http://" + testHostB + "/")
	s.ok(curl + "http://" + testHostB + "/")
}

func forkSandbox(t *testing.T, srv *server, c *client.Client, id string, n int) []string {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.url+"/sandboxes/"+id+"/fork", strings.NewReader(fmt.Sprintf(`{"count":%d}`, n)))
	req.Header.Set("X-API-KEY", c.APIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("fork: %d %s", resp.StatusCode, body)
	}
	var out []struct {
		Sandbox struct {
			SandboxID string `json:"sandboxID"`
		} `json:"sandbox"`
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out) != n {
		t.Fatalf("fork answer %s: %v", body, err)
	}
	var ids []string
	for _, s := range out {
		id := s.Sandbox.SandboxID
		if id == "" {
			t.Fatalf("a fork failed: %s", body)
		}
		ids = append(ids, id)
		t.Cleanup(func() { _ = c.Kill(context.Background(), id) })
	}
	return ids
}

// TestNetworkNpmInstall installs a real package from the npm registry inside a sandbox. It needs
// the host to reach the registry: when it cannot, the test fails saying so.
func TestNetworkNpmInstall(t *testing.T) {
	const registry = "https://registry.npmjs.org/"
	resp, err := http.Get(registry + "is-odd")
	if err != nil {
		t.Fatalf("the host itself cannot reach the npm registry (%v): this test needs it", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the host itself cannot use the npm registry (HTTP %d): this test needs it", resp.StatusCode)
	}
	_, c := netServe(t, reservedOpenings(t, "registry.npmjs.org")...)
	s := newSbx(t, c, client.CreateOptions{Timeout: 10 * time.Minute})
	// The guest trusts what the host trusts (this machine's egress may re-sign TLS).
	bundle, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.sb.Upload(context.Background(), "/tmp/host-ca.crt", "user", bytes.NewReader(bundle)); err != nil {
		t.Fatal(err)
	}
	// Debian's nodejs has no npm: fetch npm itself from the registry, then install with it.
	out := s.ok(`set -e; export NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt
curl -sSf --cacert /tmp/host-ca.crt ` + registry + `npm/-/npm-10.9.2.tgz | tar xz -C /tmp
mkdir -p ~/app && cd ~/app
node /tmp/package/bin/npm-cli.js install --no-audit --no-fund --cafile /tmp/host-ca.crt is-odd@3.0.1 2>&1 | tail -3
node -e "console.log('is-odd(3) =', require('is-odd')(3))"`)
	if !strings.Contains(out, "is-odd(3) = true") {
		t.Fatalf("npm install in the guest:\n%s", out)
	}
}

// TestNetworkAfterRestart: a daemon killed with sandboxes running comes back, re-adopts them and
// gives each a new network under its stored policy; the Prometheus endpoint counts per sandbox.
func TestNetworkAfterRestart(t *testing.T) {
	needTestHosts(t)
	d := newDaemon(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	_ = ln.Close()
	tokenFile := filepath.Join(t.TempDir(), "metrics-token")
	if err := os.WriteFile(tokenFile, []byte("scrape-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--dns-host", "allowed.test=" + testHostA, "--metrics-listen", metricsAddr, "--metrics-token-file", tokenFile,
		"--net-allow-reserved", testHostA, "--net-allow-reserved", testHostB}
	s1, c := d.serve(t, flags...)
	s := newSbx(t, c, client.CreateOptions{Timeout: 10 * time.Minute, Network: &client.Network{DenyOut: []string{testHostB + "/32"}}})
	s.ok(curl + "https://allowed.test/")
	if err := s1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = s1.cmd.Wait()

	_, c = d.serve(t, flags...)
	s = connectSbx(t, c, s.id)
	s.ok(curl + "https://allowed.test/")
	s.refused(curl + "http://" + testHostB + "/")
	// Sandbox ids are capabilities: the per-sandbox series need the scrape token.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("metrics without the token: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+metricsAddr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer scrape-secret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	want := fmt.Sprintf(`cell_sandbox_network_denied_connections_total{sandbox_id=%q,team_id=`, s.id)
	if !strings.Contains(string(body), want) || !strings.Contains(string(body), "cell_sandbox_network_transmit_bytes_total{sandbox_id=") {
		t.Fatalf("metrics:\n%s", body)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, want) && strings.HasSuffix(line, " 0") {
			t.Fatalf("the denied connection is not counted: %s", line)
		}
	}
}

// TestRunNetwork: `cell run` sandboxes have the network too, with the same policy flags.
func TestRunNetwork(t *testing.T) {
	needTestHosts(t)
	rd := runDir(t)
	// The test hosts are on a private network: closed to sandboxes unless allowed.
	if r := cli(t, rd, "", "run", "--", "curl", "-sS", "-m", "8", "http://"+testHostA+"/"); r.code != 7 {
		t.Fatalf("cell run, a private address: exit %d, want curl's 7 (refused): %s %s", r.code, r.stdout, r.stderr)
	}
	open := []string{"run", "--net-allow-reserved", testHostA, "--net-allow-reserved", testHostB}
	if r := cli(t, rd, "", append(open, "--", "curl", "-sS", "-m", "8", "http://"+testHostA+"/")...); r.code != 0 || !strings.Contains(r.stdout, "local="+testHostA) {
		t.Fatalf("cell run, internet on: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, rd, "", append(open, "--no-internet", "--allow-out", testHostB, "--", "curl", "-sS", "-m", "8", "http://"+testHostA+"/")...); r.code != 7 {
		t.Fatalf("cell run --no-internet: exit %d, want curl's 7 (refused): %s %s", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, rd, "", append(open, "--no-internet", "--allow-out", testHostB, "--", "curl", "-sS", "-m", "8", "http://"+testHostB+"/")...); r.code != 0 {
		t.Fatalf("cell run --allow-out: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, rd, "", "run", "--deny-out", "example.com", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "denyOut[0]") {
		t.Fatalf("cell run --deny-out example.com: %d %s", r.code, r.stderr)
	}
	assertNothingLeft(t, rd)
}

// TestNetworkExposedStreaming: a response the guest's server writes in pieces reaches the client
// piece by piece through the proxy, not when it ends.
func TestNetworkExposedStreaming(t *testing.T) {
	srv, c := netServe(t)
	s := newSbx(t, c, client.CreateOptions{})
	s.ok(`(nohup node -e "require('http').createServer((q, r) => { r.write('first\n'); setTimeout(() => r.end('second\n'), 3000) }).listen(8000)" >/dev/null 2>&1 &)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", srv.url+"/", nil)
		req.Header.Set("E2b-Sandbox-Id", s.id)
		req.Header.Set("E2b-Sandbox-Port", "8000")
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusBadGateway && time.Now().Before(deadline) {
			_ = resp.Body.Close()
			time.Sleep(200 * time.Millisecond)
			continue
		}
		buf := make([]byte, 6)
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first\n" {
			t.Fatalf("first piece: %q %v (status %d)", buf, err, resp.StatusCode)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Fatalf("the first piece took %v: the proxy held it back", d)
		}
		rest, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(rest) != "second\n" || time.Since(t0) < 2500*time.Millisecond {
			t.Fatalf("rest %q after %v", rest, time.Since(t0))
		}
		return
	}
}

// fdCount is how many file descriptors process pid holds.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestNetworkHostileGuest: a guest that opens hundreds of connections and UDP flows and floods
// denied destinations and DNS does not stall the daemon or another sandbox, and everything it
// made the host open is released when it lets go (and when it is killed).
func TestNetworkHostileGuest(t *testing.T) {
	srv, c := netServe(t)
	pid := srv.cmd.Process.Pid
	calm := newSbx(t, c, client.CreateOptions{})
	bad := newSbx(t, c, client.CreateOptions{Network: &client.Network{DenyOut: []string{testHostB + "/32"}}})
	base := fdCount(t, pid)
	// Hold 300 TCP connections and 100 UDP flows open to the test host, flood a denied address
	// and the resolver, then wait to be told to let go.
	bad.ok(`cat > /tmp/flood.py <<'PY'
import socket, sys, time, threading
held = []
for i in range(300):
    held.append(socket.create_connection(("` + testHostA + `", 9000), timeout=10))
for i in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("` + testHostA + `", 7)); held.append(u)
def deny():
    for i in range(300):
        s = socket.socket(); s.settimeout(5)
        try: s.connect(("` + testHostB + `", 80))
        except OSError: pass
        s.close()
def dns():
    for i in range(200):
        try: socket.gethostbyname("n%d.flood.invalid" % i)
        except OSError: pass
ts = [threading.Thread(target=deny), threading.Thread(target=dns)]
[t.start() for t in ts]; [t.join() for t in ts]
open("/tmp/holding", "w").write(str(len(held)))
while True: time.sleep(1)
PY
(nohup python3 /tmp/flood.py >/tmp/flood.log 2>&1 &)`)
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _ := bad.run("cat /tmp/holding 2>/dev/null; tail -2 /tmp/flood.log")
		if strings.HasPrefix(out, "400") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flood did not get going: %s", out)
		}
		// Meanwhile the other sandbox and the API answer.
		calm.ok(curl + "http://" + testHostA + "/")
		if _, err := c.List(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	during := fdCount(t, pid)
	if during < base+400 {
		t.Fatalf("the daemon holds %d fds (from %d) while the guest holds 400 flows: they are not forwarded?", during, base)
	}
	m := netMetrics(t, srv, c, bad.id)
	if m["netDeniedConnections"].(float64) < 300 {
		t.Fatalf("denied connections: %v", m["netDeniedConnections"])
	}
	if out, code := calm.run(curl + "http://" + testHostA + "/"); code != 0 {
		t.Fatalf("the other sandbox after the flood: %d %s\n%s", code, out, srv.logs)
	}
	// Letting go releases the host side; so does killing the sandbox.
	bad.ok("pkill -x python3; sleep 1")
	waitFDs := func(what string, limit int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for fdCount(t, pid) > limit {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the daemon still holds %d fds (baseline %d)", what, fdCount(t, pid), base)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitFDs("after the guest closed its connections", base+110) // UDP flows end after 60 s idle
	if err := c.Kill(context.Background(), bad.id); err != nil {
		t.Fatal(err)
	}
	waitFDs("after the sandbox was killed", base-5)
}

// TestSandboxCLINetwork: `cell sandbox create --no-internet` and `cell sandbox network`.
func TestSandboxCLINetwork(t *testing.T) {
	srv, c := netServe(t)
	cellCLI := func(args ...string) (string, int) {
		cmd := exec.Command(testEnv.cell, append([]string{"sandbox", "--api", srv.url, "--api-key", c.APIKey}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	out, code := cellCLI("create", "--no-internet", "--timeout", "10m")
	if code != 0 {
		t.Fatalf("create: %d %s", code, out)
	}
	id := strings.TrimSpace(out)
	t.Cleanup(func() { _ = c.Kill(context.Background(), id) })
	s := connectSbx(t, c, id)
	s.refused(curl + "http://" + testHostA + "/")
	if out, code := cellCLI("network", id, "--allow-out", testHostA); code != 0 {
		t.Fatalf("network --allow-out: %d %s", code, out)
	}
	s.ok(curl + "http://" + testHostA + "/")
	s.refused(curl + "http://" + testHostB + "/")
	if out, code := cellCLI("network", id, "--internet", "on", "--allow-out="); code != 0 {
		t.Fatalf("network --internet on: %d %s", code, out)
	}
	s.ok(curl + "http://" + testHostB + "/")
	if out, code := cellCLI("network", id, "--deny-out", "example.com"); code == 0 || !strings.Contains(out, "denyOut[0]") {
		t.Fatalf("network --deny-out example.com: %d %s", code, out)
	}
	if out, code := cellCLI("network", id); code == 0 || !strings.Contains(out, "nothing to change") {
		t.Fatalf("network without flags: %d %s", code, out)
	}
}

// TestNetworkExposedLoopbackServer: a server listening on the guest's 127.0.0.1 only is reached
// too (through envd), even with the internet off; a port nothing listens on is E2B's 502.
func TestNetworkExposedLoopbackServer(t *testing.T) {
	srv, c := netServe(t)
	off := false
	s := newSbx(t, c, client.CreateOptions{Internet: &off})
	s.ok("mkdir -p /tmp/lo && echo loopback-only > /tmp/lo/x && (nohup python3 -m http.server 8001 --bind 127.0.0.1 --directory /tmp/lo >/dev/null 2>&1 &)")
	for i := 0; i < 3; i++ {
		if body := portGet(t, srv, s.id, 8001, "/x", nil, 200); body != "loopback-only\n" {
			t.Fatalf("loopback server answered %q", body)
		}
	}
	body := portGet(t, srv, s.id, 8002, "/", nil, http.StatusBadGateway)
	if !strings.Contains(body, "port is not open") {
		t.Fatalf("closed port: %s", body)
	}
}

// TestNetworkIPv6Loopback: the guest has IPv6 on its loopback only (as a Docker container has):
// servers may listen on "::" or "::1" and are reached through the proxy; eth0 has no IPv6 address,
// so clients use IPv4 as on any IPv4-only host.
func TestNetworkIPv6Loopback(t *testing.T) {
	srv, c := netServe(t)
	s := newSbx(t, c, client.CreateOptions{})
	ifs := s.ok("cat /proc/net/if_inet6")
	if !strings.Contains(ifs, " lo\n") || strings.Contains(ifs, "eth0") {
		t.Fatalf("IPv6 addresses in the guest:\n%s", ifs)
	}
	s.ok("mkdir -p /tmp/v6 && echo over-v6 > /tmp/v6/x && " +
		"(nohup python3 -m http.server 8003 --bind :: --directory /tmp/v6 >/dev/null 2>&1 &) && " +
		"(nohup python3 -m http.server 8004 --bind ::1 --directory /tmp/v6 >/dev/null 2>&1 &)")
	for _, port := range []int{8003, 8004} {
		if body := portGet(t, srv, s.id, port, "/x", nil, 200); body != "over-v6\n" {
			t.Fatalf("server on port %d answered %q", port, body)
		}
	}
	if out := s.ok("curl -sS -m 5 'http://[::1]:8004/x'"); out != "over-v6\n" {
		t.Fatalf("curl [::1] in the guest: %q", out)
	}
}

// reservedOpenings are the --net-allow-reserved flags that let sandboxes reach host: this
// machine may reach it through an address of a reserved range (its egress proxy), which
// sandboxes reach only if the operator opens it, as one would here.
func reservedOpenings(t *testing.T, host string) []string {
	t.Helper()
	addrs, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip4", host)
	if err != nil {
		t.Fatalf("resolving %s on the host (this test needs it): %v", host, err)
	}
	var open []string
	for _, a := range addrs {
		if _, blocked := (&netstack.Guard{}).Blocked(a); blocked {
			open = append(open, "--net-allow-reserved", a.String()+"/32")
		}
	}
	return open
}
