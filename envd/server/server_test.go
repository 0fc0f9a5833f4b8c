package server

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cellhq/cell/envd/filesystem"
	"github.com/cellhq/cell/envd/state"
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
		req, _ := http.NewRequest(method, srv.URL+SyncPath, nil)
		if token != "" {
			req.Header.Set(filesystem.AccessTokenHeader, token)
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
