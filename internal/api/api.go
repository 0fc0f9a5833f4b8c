package api

import (
	"cmp"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/manager"
)

// OpenAPI is Cell's API description, served at /openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// MaxBody bounds a REST request body.
const MaxBody = 1 << 20

// Config configures the API.
type Config struct {
	Manager *manager.Manager
	// Templates serves template builds (nil: their routes answer 501).
	Templates Templates
	Keys      auth.Keys
	// Domain is the sandbox domain reported to clients and matched in {port}-{id}.{domain} hosts.
	Domain string
	Log    *slog.Logger
	// MaxStreams and MaxSandboxStreams bound the proxy's requests in flight, in total and per
	// sandbox (envd and ports each); zero: DefaultMaxStreams, DefaultMaxSandboxStreams.
	MaxStreams, MaxSandboxStreams int
}

// API is the HTTP handler of `cell serve`.
type API struct {
	cfg   Config
	mux   *http.ServeMux
	proxy *proxy
	// bodyTime bounds the read of a REST request's body.
	bodyTime time.Duration
}

// New returns the handler.
func New(cfg Config) *API {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	a := &API{cfg: cfg, mux: http.NewServeMux(), proxy: newProxy(cfg.Manager, cfg.Domain, cfg.Log), bodyTime: restBodyTime}
	if cfg.MaxStreams > 0 || cfg.MaxSandboxStreams > 0 {
		a.proxy.streams = newStreamLimits(cmp.Or(cfg.MaxStreams, DefaultMaxStreams), cmp.Or(cfg.MaxSandboxStreams, DefaultMaxSandboxStreams))
	}
	a.mux.HandleFunc("GET /health", a.health)
	a.mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(OpenAPI)
	})
	a.route("POST /sandboxes", a.create)
	a.route("POST /v2/sandboxes", a.create)
	a.route("GET /sandboxes", a.listV1)
	a.route("GET /v2/sandboxes", a.listV2)
	a.route("GET /sandboxes/{id}", a.get)
	a.route("DELETE /sandboxes/{id}", a.kill)
	a.route("POST /sandboxes/{id}/timeout", a.timeout)
	a.route("POST /sandboxes/{id}/refreshes", a.refresh)
	a.route("POST /sandboxes/{id}/connect", a.connect)
	a.route("POST /v2/sandboxes/{id}/connect", a.connect)
	a.route("GET /sandboxes/{id}/metrics", a.metrics)
	a.route("GET /sandboxes/{id}/logs", a.logs)
	a.route("GET /v2/sandboxes/{id}/logs", a.logs)
	a.route("POST /sandboxes/{id}/pause", a.pause)
	a.route("POST /sandboxes/{id}/resume", a.resume)
	a.route("POST /sandboxes/{id}/snapshots", a.snapshot)
	a.route("GET /snapshots", a.snapshots)
	a.route("DELETE /templates/{tid}", a.deleteTemplate)
	a.route("POST /sandboxes/{id}/fork", a.fork)
	a.route("PUT /sandboxes/{id}/network", a.updateNetwork)
	a.route("GET /templates/aliases/{alias}", a.templateAlias)
	a.routeTemplates()
	// E2B routes Cell does not serve yet (the ones E2B's SDKs call, and two listings): a clear 501,
	// not a 404 the SDK would read as "no such thing".
	for _, p := range []string{
		"GET /sandboxes/metrics",
		"GET /secrets", "POST /secrets", "GET /secrets/{secretID}", "POST /secrets/{secretID}", "DELETE /secrets/{secretID}",
		"GET /volumes", "POST /volumes", "GET /volumes/{volumeID}", "DELETE /volumes/{volumeID}",
		"GET /volumecontent/{volumeID}/dir", "POST /volumecontent/{volumeID}/dir", "GET /volumecontent/{volumeID}/file",
		"PUT /volumecontent/{volumeID}/file", "GET /volumecontent/{volumeID}/path", "PATCH /volumecontent/{volumeID}/path",
		"DELETE /volumecontent/{volumeID}/path",
	} {
		a.route(p, func(w http.ResponseWriter, r *http.Request, _ string) { notImplemented(w, r.Pattern) })
	}
	// GET /templates/{tid}/tags, which as a pattern would clash with the alias lookup's.
	a.route("GET /templates/{tid}/{sub}", func(w http.ResponseWriter, r *http.Request, team string) {
		if r.PathValue("sub") != "tags" {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
			return
		}
		a.templateTags(w, r, team)
	})
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return a
}

// notImplemented answers an E2B route ("METHOD /path") that Cell does not serve yet.
func notImplemented(w http.ResponseWriter, route string) {
	writeError(w, http.StatusNotImplemented, route+" is not implemented by Cell yet")
}

// route registers an authenticated handler; h gets the caller's team, and a ResponseWriter
// through which fail logs what a 5xx leaves out and decode learns its time.
func (a *API) route(pattern string, h func(http.ResponseWriter, *http.Request, string)) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		w = &restWriter{ResponseWriter: w, log: a.cfg.Log.With("method", r.Method, "path", r.URL.Path), bodyTime: a.bodyTime}
		key := r.Header.Get("X-API-KEY")
		if key == "" {
			writeError(w, http.StatusUnauthorized, "missing X-API-KEY header")
			return
		}
		team, err := a.cfg.Keys.Team(r.Context(), key)
		if err != nil {
			if errors.Is(err, auth.ErrInvalidKey) {
				writeError(w, http.StatusUnauthorized, err.Error())
				return
			}
			internalError(w, "checking the API key failed", err)
			return
		}
		h(w, r, team)
	})
}

// restWriter is the ResponseWriter of a REST handler: it carries the log a 5xx's details go to
// and how long the request's body may take.
type restWriter struct {
	http.ResponseWriter
	log      *slog.Logger
	bodyTime time.Duration
}

// Unwrap lets http.ResponseController reach the connection.
func (rw *restWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// ServeHTTP routes sandbox traffic to the proxy and the rest to the REST API.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id, port, ok := a.proxy.target(r); ok {
		a.proxy.serve(w, r, id, port)
		return
	}
	if r.URL.Path == "/files" && r.URL.Query().Has("signature") {
		a.proxy.serveSigned(w, r)
		return
	}
	a.mux.ServeHTTP(w, r)
}
