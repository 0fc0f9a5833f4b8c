package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/pkg/client"
)

func medianF(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkNetThroughput sends 256 MiB from the guest to a test host's TCP sink per iteration
// and reports the rate the guest measured (connect to the sink's byte count).
func BenchmarkNetThroughput(b *testing.B) {
	_, c := netServe(b)
	s := newSbx(b, c, client.CreateOptions{Timeout: 30 * time.Minute})
	const mib = 256
	script := fmt.Sprintf(`python3 -c "
import socket, time
buf = bytes(1 << 20)
t = time.perf_counter()
s = socket.create_connection(('%s', 9000))
for _ in range(%d): s.sendall(buf)
s.shutdown(socket.SHUT_WR)
n = int(s.makefile().readline())
print(n, time.perf_counter() - t)"`, testHostA, mib)
	var rates []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := strings.Fields(s.ok(script))
		n, _ := strconv.Atoi(f[0])
		secs, _ := strconv.ParseFloat(f[1], 64)
		if n != mib<<20 {
			b.Fatalf("the sink received %d bytes, want %d", n, mib<<20)
		}
		rates = append(rates, float64(n)*8/secs/1e6)
	}
	b.ReportMetric(medianF(rates), "median-Mbit/s")
}

// BenchmarkPortLatency: a small HTTP response from a server in the guest, requested through
// cell serve's proxy at the sandbox's port (keep-alive), against the same request made inside
// the guest to localhost.
func BenchmarkPortLatency(b *testing.B) {
	srv, c := netServe(b)
	s := newSbx(b, c, client.CreateOptions{Timeout: 30 * time.Minute})
	s.ok(`(nohup node -e "require('http').createServer((q, r) => r.end('ok')).listen(8000)" >/dev/null 2>&1 &)`)
	portGet(b, srv, s.id, 8000, "/", nil, 200)
	const n = 200
	// Inside the guest: the same request with curl (native code, one keep-alive connection), n
	// times; the median of curl's own per-transfer time.
	out := s.ok(fmt.Sprintf(`curl -s -w '%%{time_total}\n' $(for i in $(seq %d); do printf -- '-o /dev/null http://127.0.0.1:8000/ '; done)`, n))
	var inside []float64
	for _, f := range strings.Fields(out) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			b.Fatalf("guest measurement %q: %v", f, err)
		}
		inside = append(inside, v*1e6)
	}
	if len(inside) != n {
		b.Fatalf("guest made %d requests, want %d", len(inside), n)
	}
	insideUs := medianF(inside)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < n; j++ {
			req, _ := http.NewRequestWithContext(context.Background(), "GET", srv.url+"/", nil)
			req.Header.Set("E2b-Sandbox-Id", s.id)
			req.Header.Set("E2b-Sandbox-Port", "8000")
			t0 := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			ds = append(ds, time.Since(t0))
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	}
	b.StopTimer()
	m := median(ds)
	b.ReportMetric(float64(m.Microseconds())/1000, "proxy-median-ms")
	b.ReportMetric(insideUs/1000, "inside-median-ms")
	b.ReportMetric(float64(m.Microseconds())/1000-insideUs/1000, "overhead-ms")
}

// BenchmarkRestoreNetwork starts sandboxes side by side on two runtimes, one whose VMs have a
// network and one whose VMs have no network device, restored from the base template or booted
// cold, and reports both medians and what the network adds (to envd ready, then Close).
func BenchmarkRestoreNetwork(b *testing.B) {
	ctx := context.Background()
	rts := map[string]*sandbox.Runtime{}
	for name, off := range map[string]bool{"net": false, "nonet": true} {
		rd, err := os.MkdirTemp("", "cell-bench-run-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = os.RemoveAll(rd) })
		cfg := sandbox.RuntimeConfig{Home: testEnv.home, Envd: testEnv.envd, RunDir: rd, Attempts: 1,
			BootTimeout: 60 * time.Second, DieWithParent: true, NoNetwork: off}
		rt, _, err := sandbox.NewRuntime(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		tmpl, err := rt.EnsureTemplate(ctx, testEnv.home, "base")
		if err != nil {
			b.Fatal(err)
		}
		rt.SetTemplate("base", tmpl)
		rts[name] = rt
	}
	for _, mode := range []string{"Restore", "Cold"} {
		b.Run(mode, func(b *testing.B) {
			ds := map[string][]time.Duration{}
			for i := 0; i < b.N; i++ {
				for _, name := range []string{"net", "nonet"} {
					t0 := time.Now()
					sb, err := rts[name].Boot(ctx, sandbox.Options{Cold: mode == "Cold"})
					if err != nil {
						b.Fatal(err)
					}
					ds[name] = append(ds[name], time.Since(t0))
					if (sb.Net != nil) != (name == "net") {
						b.Fatalf("%s: network %v", name, sb.Net)
					}
					_ = sb.Close()
				}
			}
			withNet, without := median(ds["net"]), median(ds["nonet"])
			b.ReportMetric(float64(withNet.Microseconds())/1000, "net-median-ms")
			b.ReportMetric(float64(without.Microseconds())/1000, "nonet-median-ms")
			b.ReportMetric(float64((withNet-without).Microseconds())/1000, "added-ms")
		})
	}
}
