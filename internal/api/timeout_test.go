package api

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/manager"
)

// Every route that takes a timeout checks the whole seconds it was given before turning them into
// a time.Duration: 18446744074 s used to overflow into 0.29 s, pass the range check and end the
// sandbox (a paused one with its saved state) within a second.
func TestTimeoutRangeCheckedBeforeConversion(t *testing.T) {
	srv, key, _ := setup(t)
	routes := []struct{ method, path, body string }{
		{"POST", "/sandboxes", `{"templateID": "base", "timeout": %d}`},
		{"POST", "/v2/sandboxes", `{"templateID": "base", "timeout": %d}`},
		{"POST", "/sandboxes/abc123/timeout", `{"timeout": %d}`},
		{"POST", "/sandboxes/abc123/connect", `{"timeout": %d}`},
		{"POST", "/v2/sandboxes/abc123/connect", `{"timeout": %d}`},
		{"POST", "/sandboxes/abc123/resume", `{"timeout": %d}`},
		{"POST", "/sandboxes/abc123/fork", `{"count": 1, "timeout": %d}`},
	}
	limit := int64(manager.MaxTimeout / time.Second)
	for _, r := range routes {
		for _, v := range []int64{-1, limit + 1, 18446744074, 9223372037, 9223372036854775807, math.MinInt64} {
			t.Run(fmt.Sprintf("%s %s %d", r.method, r.path, v), func(t *testing.T) {
				a := call(t, srv, r.method, r.path, key, fmt.Sprintf(r.body, v), nil)
				if a.status != 400 {
					t.Fatalf("status %d, want 400: %s", a.status, a.raw)
				}
				if msg, _ := a.body["message"].(string); !strings.Contains(msg, "timeout") {
					t.Errorf("message %q does not name the field", msg)
				}
			})
		}
	}
	// A value in range reaches the manager (which then finds no such sandbox).
	if a := call(t, srv, "POST", "/sandboxes/abc123/timeout", key, fmt.Sprintf(`{"timeout": %d}`, limit), nil); a.status != 404 {
		t.Fatalf("a timeout of %d s: status %d, want 404: %s", limit, a.status, a.raw)
	}
}

func FuzzTimeoutSeconds(f *testing.F) {
	for _, v := range []int{0, 1, 15, 86400, 86401, -1, 18446744074, 9223372037, math.MaxInt, math.MinInt} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, seconds int) {
		d, err := timeoutSeconds(seconds)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "timeout: ") {
				t.Fatalf("error %q does not name the field", err)
			}
			if seconds >= 0 && time.Duration(seconds) <= manager.MaxTimeout/time.Second {
				t.Fatalf("%d s refused: %v", seconds, err)
			}
			return
		}
		if d < 0 || d > manager.MaxTimeout || d != time.Duration(seconds)*time.Second || int(d/time.Second) != seconds {
			t.Fatalf("%d s became %v", seconds, d)
		}
	})
}
