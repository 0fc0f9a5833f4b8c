package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/pkg/envd"
)

// TestSync: POST /cell/sync flushes (once per request) and needs the access token.
func TestSync(t *testing.T) {
	defaults := state.New("user")
	tok := "secret"
	defaults.Apply(state.Update{Token: &tok})
	syncs := 0
	srv := httptest.NewServer(Handler(Services{Defaults: defaults, Sync: func() { syncs++ }}))
	defer srv.Close()
	do := func(method, token string) int {
		req, _ := http.NewRequest(method, srv.URL+envd.SyncPath, nil)
		if token != "" {
			req.Header.Set(envd.AccessTokenHeader, token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if got := do("POST", ""); got != http.StatusUnauthorized || syncs != 0 {
		t.Fatalf("without the token: HTTP %d, %d syncs", got, syncs)
	}
	if got := do("GET", tok); got != http.StatusMethodNotAllowed || syncs != 0 {
		t.Fatalf("GET: HTTP %d, %d syncs", got, syncs)
	}
	if got := do("POST", tok); got != http.StatusNoContent || syncs != 1 {
		t.Fatalf("POST: HTTP %d, %d syncs", got, syncs)
	}
}

// TestInitBodyLimit: /init takes a body as large as the host can send (its API's 1 MiB of env
// vars, re-encoded) and refuses a larger one with 413, naming the limit.
func TestInitBodyLimit(t *testing.T) {
	defaults := state.New("user")
	srv := httptest.NewServer(Handler(Services{Defaults: defaults, Log: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	post := func(value string) (int, string) {
		body, _ := json.Marshal(envd.InitRequest{EnvVars: map[string]string{"BIG": value}})
		resp, err := http.Post(srv.URL+"/init", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	// 1 MiB of U+2028 sent as it is, which Go encodes as 6-byte escapes: 2 MiB.
	if code, body := post(strings.Repeat("\u2028", (1<<20)/3)); code != http.StatusNoContent || defaults.Envs()["BIG"] == "" {
		t.Fatalf("the host's largest /init: %d %s", code, body)
	}
	if code, body := post(strings.Repeat("x", maxInitBody)); code != http.StatusRequestEntityTooLarge || !strings.Contains(body, strconv.Itoa(maxInitBody)) {
		t.Fatalf("over the limit: %d %s", code, body)
	}
}

// TestApplyInit: an init that comes with the channel's handshake is applied as POST /init's
// body is, with the same checks.
func TestApplyInit(t *testing.T) {
	defaults := state.New("user")
	var hostname string
	svc := Services{Defaults: defaults, Users: &process.Users{}, Log: slog.New(slog.DiscardHandler),
		SetHostname: func(h string) error { hostname = h; return nil }}
	tok, host, id := "tok", "sbx1", "sbx1"
	body, _ := json.Marshal(envd.InitRequest{EnvVars: map[string]string{"A": "1"}, AccessToken: &tok, Hostname: &host, SandboxID: &id})
	if err := svc.ApplyInit(body); err != nil {
		t.Fatal(err)
	}
	if envs := defaults.Envs(); envs["A"] != "1" || envs["E2B_SANDBOX_ID"] != "sbx1" || hostname != "sbx1" || !defaults.CheckToken("tok") {
		t.Fatalf("after the init: envs %v, host name %q, token taken %v", envs, hostname, defaults.CheckToken("tok"))
	}
	if err := svc.ApplyInit([]byte("{")); err == nil || !strings.Contains(err.Error(), "init:") {
		t.Fatalf("a broken body: %v", err)
	}
	nobody := "no-such-user-here"
	body, _ = json.Marshal(envd.InitRequest{DefaultUser: &nobody, EnvVars: map[string]string{"B": "2"}})
	if err := svc.ApplyInit(body); err == nil || !strings.Contains(err.Error(), `defaultUser: user "no-such-user-here" not found`) {
		t.Fatalf("an unknown user: %v", err)
	}
	if _, ok := defaults.Envs()["B"]; ok {
		t.Fatal("a refused init changed the variables")
	}
	empty := ""
	body, _ = json.Marshal(envd.InitRequest{Hostname: &empty})
	if err := svc.ApplyInit(body); err == nil || !strings.Contains(err.Error(), "hostname") {
		t.Fatalf("an empty host name: %v", err)
	}
}
