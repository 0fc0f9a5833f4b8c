package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/pkg/envd"
)

// unreachable is the runtime boundary broken on purpose: every request here must be refused
// before a VM is asked for.
type unreachable struct{ t *testing.T }

func (u unreachable) Boot(context.Context, sandbox.Options) (manager.Instance, error) {
	u.t.Error("Boot called for a request that should have been refused")
	return nil, errors.New("unreachable")
}

func (u unreachable) Adopt(context.Context, string, int, uint64, *netstack.Rules) (manager.Instance, error) {
	return nil, errors.New("unreachable")
}

func (u unreachable) Snapshot(context.Context, manager.Instance, string, string, string, string, bool) (*sandbox.Template, error) {
	u.t.Error("Snapshot called for a request that should have been refused")
	return nil, errors.New("unreachable")
}

func (u unreachable) Resume(context.Context, string, envd.InitRequest, *netstack.Rules, bool) (manager.Instance, error) {
	u.t.Error("Resume called for a request that should have been refused")
	return nil, errors.New("unreachable")
}

func setup(t *testing.T) (*httptest.Server, string, *store.Store) {
	t.Helper()
	mgr, keys, key, st := deps(t, unreachable{t}, nil)
	srv := httptest.NewServer(New(Config{Manager: mgr, Keys: keys}))
	t.Cleanup(srv.Close)
	return srv, key, st
}

// deps opens a store, a manager over it with rt as the VM runtime (and what mutate changes of its
// configuration) and an API key of team-a: what every test of the API serves from.
func deps(t testing.TB, rt manager.Runtime, mutate func(*manager.Config)) (*manager.Manager, auth.Keys, string, *store.Store) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "cell.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	cfg := manager.Config{Runtime: rt, Templates: &sandbox.TemplateSet{}, Store: st, Home: t.TempDir()}
	if mutate != nil {
		mutate(&cfg)
	}
	mgr, err := manager.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	keys := auth.Keys{Store: st}
	key, _, err := keys.Create(ctx, "team-a", "test")
	if err != nil {
		t.Fatal(err)
	}
	return mgr, keys, key, st
}

type answer struct {
	status int
	body   map[string]any
	raw    string
}

func call(t *testing.T, srv *httptest.Server, method, path, key, body string, hdr map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-KEY", key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func TestErrors(t *testing.T) {
	srv, key, st := setup(t)
	revoked, rec, err := auth.Keys{Store: st}.Create(context.Background(), "team-a", "old")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RevokeAPIKey(context.Background(), rec.ID); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, method, path, key, body string
		hdr                           map[string]string
		status                        int
		mention                       string
	}{
		{"missing key", "GET", "/v2/sandboxes", "", "", nil, 401, "X-API-KEY"},
		{"malformed key", "GET", "/v2/sandboxes", "e2b_XYZ", "", nil, 401, "hex"},
		{"unknown key", "GET", "/v2/sandboxes", "e2b_" + strings.Repeat("ab", 20), "", nil, 401, "unknown"},
		{"revoked key", "GET", "/v2/sandboxes", revoked, "", nil, 401, "revoked"},
		{"malformed JSON", "POST", "/sandboxes", key, `{"templateID": "base",`, nil, 400, "JSON"},
		{"unknown field", "POST", "/sandboxes", key, `{"templateID": "base", "colour": "red"}`, nil, 400, "colour"},
		{"wrong type", "POST", "/sandboxes", key, `{"templateID": "base", "timeout": "soon"}`, nil, 400, "timeout"},
		{"two values", "POST", "/sandboxes", key, `{"templateID": "base"} {}`, nil, 400, "more than one"},
		{"no body", "POST", "/sandboxes", key, ``, nil, 400, "JSON object"},
		{"oversized body", "POST", "/sandboxes", key, `{"templateID": "` + strings.Repeat("a", MaxBody) + `"}`, nil, 413, "larger"},
		{"missing template", "POST", "/sandboxes", key, `{"timeout": 10}`, nil, 400, "templateID"},
		{"bad template id", "POST", "/sandboxes", key, `{"templateID": "../etc"}`, nil, 400, "templateID"},
		{"unknown template", "POST", "/sandboxes", key, `{"templateID": "nosuch"}`, nil, 404, "nosuch"},
		{"negative timeout", "POST", "/sandboxes", key, `{"templateID": "base", "timeout": -1}`, nil, 400, "timeout"},
		{"huge timeout", "POST", "/v2/sandboxes", key, `{"templateID": "base", "timeout": 999999}`, nil, 400, "timeout"},
		{"too much metadata", "POST", "/sandboxes", key, `{"templateID": "base", "metadata": {"": "x"}}`, nil, 400, "metadata"},
		{"unsupported feature", "POST", "/sandboxes", key, `{"templateID": "base", "volumeMounts": [{"name": "v", "path": "/v"}]}`, nil, 501, "volumeMounts"},
		{"bad sandbox id", "GET", "/sandboxes/Not..Valid", key, "", nil, 400, "sandboxID"},
		{"unknown sandbox", "GET", "/sandboxes/abc123", key, "", nil, 404, "abc123"},
		{"kill unknown", "DELETE", "/sandboxes/abc123", key, "", nil, 404, "abc123"},
		{"timeout unknown", "POST", "/sandboxes/abc123/timeout", key, `{"timeout": 5}`, nil, 404, "abc123"},
		{"timeout without value", "POST", "/sandboxes/abc123/timeout", key, `{}`, nil, 400, "timeout"},
		{"bad limit", "GET", "/v2/sandboxes?limit=0", key, "", nil, 400, "limit"},
		{"bad token", "GET", "/v2/sandboxes?nextToken=zz", key, "", nil, 400, "nextToken"},
		{"bad state", "GET", "/v2/sandboxes?state=dead", key, "", nil, 400, "state"},
		{"pause unknown", "POST", "/sandboxes/abc123/pause", key, `{}`, nil, 404, "abc123"},
		{"pause bad body", "POST", "/sandboxes/abc123/pause", key, `{"memory": "yes"}`, nil, 400, "memory"},
		{"snapshot unknown", "POST", "/sandboxes/abc123/snapshots", key, `{}`, nil, 404, "abc123"},
		{"snapshot bad name", "POST", "/sandboxes/abc123/snapshots", key, `{"name": "../x"}`, nil, 400, "name"},
		{"fork unknown", "POST", "/sandboxes/abc123/fork", key, `{"count": 2}`, nil, 404, "abc123"},
		{"fork too many", "POST", "/sandboxes/abc123/fork", key, `{"count": 101}`, nil, 400, "count"},
		{"delete base template", "DELETE", "/templates/base", key, "", nil, 409, "base"},
		{"delete unknown template", "DELETE", "/templates/nosuch", key, "", nil, 404, "nosuch"},
		{"network unknown sandbox", "PUT", "/sandboxes/abc123/network", key, `{"denyOut": ["10.0.0.0/8"]}`, nil, 404, "abc123"},
		{"network bad body", "PUT", "/sandboxes/abc123/network", key, `{"denyOut": "10.0.0.0/8"}`, nil, 400, "denyOut"},
		{"network unsupported rules", "PUT", "/sandboxes/abc123/network", key, `{"rules": {"a.com": []}}`, nil, 501, "rules"},
		{"network switches disagree", "PUT", "/sandboxes/abc123/network", key, `{"allowInternetAccess": true, "allow_internet_access": false}`, nil, 400, "disagree"},
		{"domain in denyOut", "POST", "/sandboxes", key, `{"templateID": "base", "network": {"denyOut": ["example.com"]}}`, nil, 400, "network.denyOut[0]"},
		{"bad allowOut", "POST", "/sandboxes", key, `{"templateID": "base", "network": {"allowOut": ["10.0.0.0/99"]}}`, nil, 400, "network.allowOut[0]"},
		{"bad CIDR in denyOut", "POST", "/sandboxes", key, `{"templateID": "base", "network": {"denyOut": ["1.2.3.4/40"]}}`, nil, 400, "network.denyOut[0]"},
		{"unsupported egress proxy", "POST", "/sandboxes", key, `{"templateID": "base", "network": {"egressProxy": {"address": "p:1080"}}}`, nil, 501, "egressProxy"},
		{"network unknown field", "POST", "/sandboxes", key, `{"templateID": "base", "network": {"allowOutt": []}}`, nil, 400, "allowOutt"},
		{"no route", "GET", "/nope", key, "", nil, 404, "no route"},
		{"host files are never served", "GET", "/files?path=/etc/passwd", key, "", nil, 404, "no route"},
		{"proxy: bad id", "GET", "/files?path=/etc/passwd", "", "", map[string]string{SandboxIDHeader: "../x"}, 400, SandboxIDHeader},
		{"proxy: bad port", "GET", "/health", "", "", map[string]string{SandboxIDHeader: "abc", SandboxPortHeader: "99999"}, 400, SandboxPortHeader},
		{"proxy: unknown sandbox", "GET", "/files?path=../../etc/passwd", "", "", map[string]string{SandboxIDHeader: "abc123"}, 502, "not found"},
		{"unsupported: secrets", "GET", "/secrets", key, "", nil, 501, "GET /secrets is not implemented"},
		{"unsupported: volume content", "PUT", "/volumecontent/v1/file", key, "", nil, 501, "/volumecontent/{volumeID}/file"},
		{"unsupported: template tags", "GET", "/templates/t1/tags", key, "", nil, 501, "tags"},
		{"unsupported: batch metrics", "GET", "/sandboxes/metrics", key, "", nil, 501, "/sandboxes/metrics"},
		{"template sub-path", "GET", "/templates/t1/other", key, "", nil, 404, "no route"},
		{"alias of a missing template", "GET", "/templates/aliases/nope", key, "", nil, 404, "nope"},
		{"alias bad", "GET", "/templates/aliases/Bad.Name", key, "", nil, 400, "alias"},
		{"signed URL no sandbox signed", "GET", "/files?path=/etc/passwd&signature=v1_forged", "", "", nil, 401, "signature"},
		{"signed URL bad expiration", "POST", "/files?path=/x&signature=v1_x&signature_expiration=soon", "", "", nil, 400, "signature_expiration"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := call(t, srv, c.method, c.path, c.key, c.body, c.hdr)
			if a.status != c.status {
				t.Fatalf("status %d, want %d: %s", a.status, c.status, a.raw)
			}
			if code, _ := a.body["code"].(float64); int(code) != c.status {
				t.Errorf("body code %v, want %d: %s", a.body["code"], c.status, a.raw)
			}
			if msg, _ := a.body["message"].(string); !strings.Contains(strings.ToLower(msg), strings.ToLower(c.mention)) {
				t.Errorf("message %q does not mention %q", msg, c.mention)
			}
		})
	}
	// The daemon is unharmed and still serves everyone.
	if a := call(t, srv, "GET", "/health", "", "", nil); a.status != 200 {
		t.Fatalf("health after bad input: %d", a.status)
	}
	if a := call(t, srv, "GET", "/v2/sandboxes", key, "", nil); a.status != 200 || a.raw != "[]\n" {
		t.Fatalf("list after bad input: %d %s", a.status, a.raw)
	}
}

func TestProxyTargetByHost(t *testing.T) {
	p := newProxy(nil, "cell.test", nil)
	for _, c := range []struct {
		host, id, port string
		ok             bool
	}{
		{"49983-abc123.cell.test", "abc123", "49983", true},
		{"8000-abc123.cell.test:3000", "abc123", "8000", true},
		{"8000-abc123.other.test", "", "", false},
		{"127.0.0.1:3000", "", "", false},
		{"localhost:3000", "", "", false},
		{"api.cell.test", "", "", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = c.host
		id, port, ok := p.target(r)
		if ok != c.ok || id != c.id || port != c.port {
			t.Errorf("%s: got %q %q %v", c.host, id, port, ok)
		}
	}
}

func TestOpenAPIServedAndComplete(t *testing.T) {
	srv, _, _ := setup(t)
	a := call(t, srv, "GET", "/openapi.yaml", "", "", nil)
	if a.status != 200 {
		t.Fatalf("openapi: %d", a.status)
	}
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal([]byte(a.raw), &doc); err != nil {
		t.Fatalf("openapi.yaml does not parse: %v", err)
	}
	// Every route the API serves is described.
	for _, r := range []string{
		"POST /sandboxes", "GET /sandboxes", "POST /v2/sandboxes", "GET /v2/sandboxes", "GET /sandboxes/{sandboxID}",
		"DELETE /sandboxes/{sandboxID}", "POST /sandboxes/{sandboxID}/timeout", "POST /sandboxes/{sandboxID}/refreshes",
		"POST /sandboxes/{sandboxID}/connect", "GET /sandboxes/{sandboxID}/metrics", "GET /sandboxes/{sandboxID}/logs",
		"POST /sandboxes/{sandboxID}/pause", "POST /sandboxes/{sandboxID}/resume", "POST /sandboxes/{sandboxID}/snapshots",
		"GET /snapshots", "DELETE /templates/{templateID}", "POST /sandboxes/{sandboxID}/fork", "GET /health",
		"GET /templates/aliases/{alias}", "GET /templates/{templateID}", "POST /v3/templates", "GET /templates/{templateID}/files/{hash}",
		"PUT /templates/{templateID}/files/{hash}", "POST /v2/templates/{templateID}/builds/{buildID}",
		"GET /templates/{templateID}/builds/{buildID}/status", "GET /templates/{templateID}/builds/{buildID}/logs", "GET /templates",
		"GET /v2/templates", "POST /templates/tags", "DELETE /templates/tags", "GET /templates/{templateID}/tags",
	} {
		method, path, _ := strings.Cut(r, " ")
		if _, ok := doc.Paths[path][strings.ToLower(method)]; !ok {
			t.Errorf("openapi.yaml does not describe %s", r)
		}
	}
}
