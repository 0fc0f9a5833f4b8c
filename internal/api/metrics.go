package api

import (
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/cellhq/cell/internal/manager"
)

// netStats is what the metrics handler needs of the manager.
type netStats interface {
	NetStatsAll() []manager.SandboxNet
}

// MetricsHandler serves the daemon's Prometheus metrics (text exposition format), meant for an
// operator-only listener. Per-sandbox series name sandboxes by id, and an id is the capability
// to reach a sandbox's public ports: they are served only to a scraper that presents token
// (Authorization: Bearer, as Prometheus's authorization.credentials_file sends it), and then
// every request must. Without a token, only the count of running sandboxes is served.
func MetricsHandler(mgr netStats, token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" {
			scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
			if !strings.EqualFold(scheme, "Bearer") || !tokenMatches(strings.TrimSpace(got), token) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="cell metrics"`)
				http.Error(w, "metrics: a valid bearer token (--metrics-token-file) is required", http.StatusUnauthorized)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		var b strings.Builder
		all := mgr.NetStatsAll()
		fmt.Fprintf(&b, "# HELP cell_sandboxes_running Running sandboxes with a network.\n# TYPE cell_sandboxes_running gauge\ncell_sandboxes_running %d\n", len(all))
		if token == "" {
			_, _ = w.Write([]byte(b.String()))
			return
		}
		series := []struct {
			name, help string
			get        func(manager.SandboxNet) uint64
		}{
			{"cell_sandbox_network_receive_bytes_total", "Bytes the sandbox received (frames to the guest).", func(s manager.SandboxNet) uint64 { return s.Stats.BytesIn }},
			{"cell_sandbox_network_transmit_bytes_total", "Bytes the sandbox sent (frames from the guest).", func(s manager.SandboxNet) uint64 { return s.Stats.BytesOut }},
			{"cell_sandbox_network_denied_connections_total", "Outbound connections and flows refused by policy.", func(s manager.SandboxNet) uint64 { return s.Stats.Denied }},
			{"cell_sandbox_network_connections_total", "Outbound connections and flows let through.", func(s manager.SandboxNet) uint64 { return s.Stats.Connections }},
			{"cell_sandbox_dns_refused_total", "DNS queries refused by policy.", func(s manager.SandboxNet) uint64 { return s.Stats.DNSRefused }},
		}
		for _, m := range series {
			fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n", m.name, m.help, m.name)
			for _, s := range all {
				fmt.Fprintf(&b, "%s{sandbox_id=%q,team_id=%q} %d\n", m.name, s.ID, s.Team, m.get(s))
			}
		}
		_, _ = w.Write([]byte(b.String()))
	})
}

// ReadTokenFile reads a secret from path (surrounding white space trimmed); it must not be empty.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}
