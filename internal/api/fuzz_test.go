package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/pkg/e2bapi"
	"github.com/cellhq/cell/pkg/envd"
)

// jsonRoutes are the routes that take a JSON body, with the fields their messages may name.
var jsonRoutes = []struct {
	method, path string
	fields       []string
}{
	{"POST", "/sandboxes", []string{"templateID", "timeout", "metadata", "envVars", "secure", "allow_internet_access", "autoPause", "autoPauseMemory", "autoResume", "network", "mcp", "iam", "volumeMounts"}},
	{"POST", "/v2/sandboxes", []string{"templateID", "timeout", "metadata", "envVars", "secure", "allow_internet_access", "autoPause", "autoPauseMemory", "autoResume", "network", "mcp", "iam", "volumeMounts"}},
	{"POST", "/sandboxes/abc123/timeout", []string{"timeout"}},
	{"POST", "/sandboxes/abc123/refreshes", []string{"duration"}},
	{"POST", "/sandboxes/abc123/connect", []string{"timeout", "memory"}},
	{"POST", "/v2/sandboxes/abc123/connect", []string{"timeout", "memory"}},
	{"POST", "/sandboxes/abc123/pause", []string{"memory"}},
	{"POST", "/sandboxes/abc123/resume", []string{"timeout", "memory"}},
	{"POST", "/sandboxes/abc123/snapshots", []string{"name"}},
	{"POST", "/sandboxes/abc123/fork", []string{"count", "timeout"}},
	{"PUT", "/sandboxes/abc123/network", []string{"allowOut", "denyOut", "allowInternetAccess", "allow_internet_access", "rules", "egressProxy"}},
}

// FuzzAPIBodies sends arbitrary bodies to every JSON route of the real handler (real store and
// manager; the VM runtime fails every boot, as QEMU might): never a panic, never a 5xx for a
// body (but 501 naming an unsupported field, and the runtime's own failure once a create is
// accepted), errors in the {"code","message"} shape naming the body or one of its fields, and a
// create's timeout out of range refused.
func FuzzAPIBodies(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `null`, `[]`, `"x"`, `{"templateID": "base"}`, `{"templateID": "base", "timeout": 10}`,
		`{"templateID": "base", "timeout": -1}`, `{"templateID": "base", "timeout": 86401}`,
		`{"templateID": "base", "timeout": 1e3}`, `{"templateID": "base", "timeout": "10"}`,
		`{"templateID": "../x"}`, `{"templateID": "base", "metadata": {"k": "v"}, "envVars": {"A": "1"}}`,
		`{"templateID": "base", "network": {"allowOut": ["1.2.3.4/32"], "denyOut": ["0.0.0.0/0"], "rules": {}}}`,
		`{"templateID": "base", "volumeMounts": [{}]}`, `{"timeout": 5}`, `{"duration": 3601}`, `{"memory": false}`,
		`{"name": "snap"}`, `{"count": 0}`, `{"count": 101, "timeout": 5}`, `{"allowOut": ["example.com"], "allow_internet_access": true}`,
		`{"a": 1} {"b": 2}`, `{"templateID": "base"}]`, `{"templateID": "\u0000"}`, `{"templateID": "base",`, "\xff\xfe",
		`{"templateID": "base", "metadata": {"": ""}}`, `{"templateID": "base", "timeout": 9223372036854775807}`,
		`{"templateID": "base", "timeout": 18446744074}`, `{"timeout": 18446744074}`, `{"count": 1, "timeout": 18446744074}`,
	} {
		for i := range jsonRoutes {
			f.Add(uint8(i), []byte(seed))
		}
	}
	mgr, keys, key, _ := deps(f, fuzzRuntime{}, nil)
	h := New(Config{Manager: mgr, Keys: keys})
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		r := jsonRoutes[int(route)%len(jsonRoutes)]
		req := httptest.NewRequest(r.method, r.path, bytes.NewReader(body))
		req.Header.Set("X-API-KEY", key)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Body.Len() > 64<<10 {
			t.Fatalf("%s %s: a %d-byte answer", r.method, r.path, rec.Body.Len())
		}
		code := rec.Code
		if code < 300 {
			return
		}
		var e e2bapi.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != code || e.Message == "" {
			t.Fatalf("%s %s %q: %d %q: not an error of E2B's shape", r.method, r.path, body, code, rec.Body.String())
		}
		named := strings.HasPrefix(e.Message, "request body") || strings.Contains(e.Message, "sandbox") || strings.Contains(e.Message, "template")
		for _, field := range r.fields {
			named = named || strings.Contains(e.Message, field)
		}
		switch {
		case code == 500 && strings.HasPrefix(e.Message, manager.ErrBootFailed.Error()):
			// Accepted: the runtime failed the boot.
			if (r.path == "/sandboxes" || r.path == "/v2/sandboxes") && timeoutOutOfRange(body) {
				t.Errorf("%s %s %q: a timeout out of range was accepted", r.method, r.path, body)
			}
		case code == 501 && named:
		case code >= 500:
			t.Fatalf("%s %s %q: %d %s", r.method, r.path, body, code, e.Message)
		case !named:
			t.Fatalf("%s %s %q: %d %q names neither the body nor a field", r.method, r.path, body, code, e.Message)
		}
	})
}

// timeoutOutOfRange says whether body is a JSON object whose timeout is an integer outside
// 0..manager.MaxTimeout seconds.
func timeoutOutOfRange(body []byte) bool {
	var v struct {
		Timeout *json.Number `json:"timeout"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if dec.Decode(&v) != nil || v.Timeout == nil {
		return false
	}
	n, err := v.Timeout.Int64()
	if err != nil {
		return strings.Trim(v.Timeout.String(), "-0123456789") == "" // an integer beyond int64
	}
	return n < 0 || n > int64(manager.MaxTimeout.Seconds())
}

// fuzzRuntime fails every boot (the body was accepted; QEMU is not there), and everything else.
type fuzzRuntime struct{ failingBoot }

func (fuzzRuntime) Adopt(context.Context, string, int, uint64, *netstack.Rules) (manager.Instance, error) {
	return nil, errors.New("no VMs here")
}

func (fuzzRuntime) Snapshot(context.Context, manager.Instance, string, string, string, string, bool) (*sandbox.Template, error) {
	return nil, errors.New("no VMs here")
}

func (fuzzRuntime) Resume(context.Context, string, envd.InitRequest, *netstack.Rules, bool) (manager.Instance, error) {
	return nil, errors.New("no VMs here")
}
