package api

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/cellhq/cell/pkg/e2bapi"
)

// Defaults of the API server's bounds (flags of cell serve).
const (
	// DefaultMaxConns bounds the connections the API server serves at once; more wait in the
	// listen queue until one closes.
	DefaultMaxConns = 4096
	// DefaultMaxStreams bounds the proxied requests (envd calls and their streams, requests and
	// WebSockets to exposed ports) in flight across all sandboxes.
	DefaultMaxStreams = 2048
	// DefaultMaxSandboxStreams bounds them per sandbox, for envd and for its ports each: a
	// sandbox whose port the public floods still answers its owner's SDK.
	DefaultMaxSandboxStreams = 256
	// ProxyBodyIdle is how long a proxied request's body may send nothing before it fails.
	ProxyBodyIdle = time.Minute
	// restBodyTime bounds the read of a REST request's JSON body (at most MaxBody).
	restBodyTime = 30 * time.Second
	// IdleTimeout closes a kept-alive connection that sends no new request.
	IdleTimeout = 2 * time.Minute
	// ReadHeaderTimeout bounds a request's headers.
	ReadHeaderTimeout = 30 * time.Second
)

// NewServer returns the HTTP server for the API's handler h: headers and idle keep-alive
// connections are bounded in time. A request body is not bounded as a whole (an upload to
// /files or a command's stream may last as long as it makes progress): REST bodies are bounded
// by decode, proxied ones by their idle time.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// LimitListener serves at most n connections of ln at once: Accept waits while n are open, so
// more clients wait in the kernel's listen queue instead of taking a goroutine and a descriptor
// each.
func LimitListener(ln net.Listener, n int) net.Listener {
	return netutil.LimitListener(ln, n)
}

// streamLimits bounds the proxy's requests in flight: per sandbox and kind (envd, ports), and in
// total.
type streamLimits struct {
	mu       sync.Mutex
	total    int
	maxTotal int
	maxPer   int
	per      map[streamKey]int
}

type streamKey struct{ id, kind string }

func newStreamLimits(maxTotal, maxPer int) *streamLimits {
	return &streamLimits{maxTotal: maxTotal, maxPer: maxPer, per: map[streamKey]int{}}
}

// acquire takes a place for a request to sandbox id (kind "envd" or "port"); release gives it
// back and must be called once. When there is none it answers the request (429 over the
// sandbox's bound, 503 over the total) and returns false.
func (l *streamLimits) acquire(w http.ResponseWriter, id, kind string) (release func(), ok bool) {
	k := streamKey{id, kind}
	l.mu.Lock()
	switch {
	case l.per[k] >= l.maxPer:
		l.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusTooManyRequests, e2bapi.SandboxError{SandboxID: id, Code: http.StatusTooManyRequests,
			Message: fmt.Sprintf("too many requests in flight to the sandbox's %s (at most %d at once); retry when some have finished", kind, l.maxPer)})
		return nil, false
	case l.total >= l.maxTotal:
		l.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, e2bapi.SandboxError{SandboxID: id, Code: http.StatusServiceUnavailable,
			Message: "cell serve has too many requests to sandboxes in flight (at most " + strconv.Itoa(l.maxTotal) + " at once); retry later"})
		return nil, false
	}
	l.per[k]++
	l.total++
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.per[k]--; l.per[k] == 0 {
				delete(l.per, k)
			}
		})
	}, true
}

// inFlight returns the requests in flight in total and to sandbox id's envd and ports.
func (l *streamLimits) inFlight(id string) (total, envd, port int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.per[streamKey{id, "envd"}], l.per[streamKey{id, "port"}]
}
