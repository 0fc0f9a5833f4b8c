package api

import (
	"cmp"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/pkg/e2bapi"
	"github.com/cellhq/cell/pkg/envd"
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
	Keys    auth.Keys
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
	a.mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "pools": cfg.Manager.Pools()})
	})
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
	// E2B routes Cell does not serve yet (the ones E2B's SDKs call, and two listings): a clear 501,
	// not a 404 the SDK would read as "no such thing".
	for _, p := range []string{
		"POST /v3/templates", "POST /v2/templates/{tid}/builds/{bid}", "GET /templates/{tid}/builds/{bid}/status",
		"GET /templates/{tid}/files/{hash}", "GET /templates", "POST /templates/tags",
		"DELETE /templates/tags", "GET /sandboxes/metrics",
		"GET /secrets", "POST /secrets", "GET /secrets/{secretID}", "POST /secrets/{secretID}", "DELETE /secrets/{secretID}",
		"GET /volumes", "POST /volumes", "GET /volumes/{volumeID}", "DELETE /volumes/{volumeID}",
		"GET /volumecontent/{volumeID}/dir", "POST /volumecontent/{volumeID}/dir", "GET /volumecontent/{volumeID}/file",
		"PUT /volumecontent/{volumeID}/file", "GET /volumecontent/{volumeID}/path", "PATCH /volumecontent/{volumeID}/path",
		"DELETE /volumecontent/{volumeID}/path",
	} {
		a.route(p, func(w http.ResponseWriter, r *http.Request, _ string) { notImplemented(w, r.Pattern) })
	}
	// GET /templates/{tid}/tags, which as a pattern would clash with the alias lookup's.
	a.route("GET /templates/{tid}/{sub}", func(w http.ResponseWriter, r *http.Request, _ string) {
		if r.PathValue("sub") != "tags" {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
			return
		}
		notImplemented(w, "GET /templates/{tid}/tags")
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, e2bapi.Error{Code: code, Message: msg})
}

// fail answers a manager error with its HTTP status.
func fail(w http.ResponseWriter, err error) {
	code, msg, id := answerFor(err)
	if id != "" {
		logError(w, id, err)
	}
	writeError(w, code, msg)
}

// answerFor maps a manager error to the status and message a client gets. A 4xx says what was
// wrong with the request; a 5xx only what failed, with a new error id: the error itself (host
// paths, QEMU's output, the guest's console) is for the daemon's log, with the same id.
func answerFor(err error) (code int, msg, id string) {
	switch {
	case errors.Is(err, manager.ErrInvalid):
		return http.StatusBadRequest, err.Error(), ""
	case errors.Is(err, manager.ErrNotFound):
		return http.StatusNotFound, err.Error(), ""
	case errors.Is(err, manager.ErrConflict):
		return http.StatusConflict, err.Error(), ""
	case errors.Is(err, manager.ErrShutdown):
		return http.StatusServiceUnavailable, manager.ErrShutdown.Error(), ""
	case errors.Is(err, manager.ErrInsufficientStorage):
		return http.StatusInsufficientStorage, err.Error(), ""
	case errors.Is(err, context.Canceled):
		return 499, "client closed the request", ""
	}
	what := "internal error"
	switch {
	case errors.Is(err, manager.ErrBootFailed):
		what = manager.ErrBootFailed.Error()
	case errors.Is(err, manager.ErrPauseUndone):
		what = manager.ErrPauseUndone.Error()
	}
	id = errorID()
	return http.StatusInternalServerError, fmt.Sprintf("%s (error id %s: the details are in cell serve's log)", what, id), id
}

// internalError answers 500 saying what failed, and logs err with the answer's error id.
func internalError(w http.ResponseWriter, what string, err error) {
	id := errorID()
	logError(w, id, err)
	writeError(w, http.StatusInternalServerError, fmt.Sprintf("%s (error id %s: the details are in cell serve's log)", what, id))
}

// logError logs a 5xx's error with its id, through the log a REST handler's writer carries.
func logError(w http.ResponseWriter, id string, err error) {
	if rw, ok := w.(*restWriter); ok {
		rw.log.Error("request failed", "error_id", id, "err", err)
	}
}

// errorID names one failure in an answer and in the log.
func errorID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// decode reads a JSON body strictly: bounded size and time, no unknown fields, one value.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q: expected application/json", ct))
		return false
	}
	// A client that sends its body slowly must not hold the handler: the body, to its end, has
	// bodyTime. The deadline is lifted once it is read, or it would end the request (net/http
	// watches the connection for a client going away once the body is read); after a bad body it
	// stays, so that net/http, discarding the rest, does not wait for it forever either.
	bodyTime := restBodyTime
	if rw, ok := w.(*restWriter); ok {
		bodyTime = rw.bodyTime
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyTime))
	body := http.MaxBytesReader(w, r.Body, MaxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) && optional {
		err = nil
	} else if err == nil {
		// The rest must be white space, read to its end.
		var only bool
		if only, err = onlySpace(io.MultiReader(dec.Buffered(), body)); err == nil && !only {
			writeError(w, http.StatusBadRequest, "request body: more than one JSON value")
			return false
		}
	}
	if err == nil {
		_ = rc.SetReadDeadline(time.Time{})
		return true
	}
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "request body: a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		writeError(w, http.StatusBadRequest, "request body: truncated JSON")
	case errors.Is(err, os.ErrDeadlineExceeded):
		writeError(w, http.StatusRequestTimeout, fmt.Sprintf("request body: not received within %v", bodyTime))
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body: larger than %d bytes", MaxBody))
	case errors.As(err, &se):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("request body: malformed JSON at byte %d: %v", se.Offset, err))
	case errors.As(err, &te):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("request body: field %q: expected %s, got %s", te.Field, te.Type, te.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		writeError(w, http.StatusBadRequest, "request body: "+strings.TrimPrefix(err.Error(), "json: "))
	default:
		writeError(w, http.StatusBadRequest, "request body: "+err.Error())
	}
	return false
}

// onlySpace reads r to its end and says whether it held nothing but JSON white space.
func onlySpace(r io.Reader) (bool, error) {
	buf := make([]byte, 4096)
	only := true
	for {
		n, err := r.Read(buf)
		for _, c := range buf[:n] {
			if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
				only = false
			}
		}
		if err == io.EOF {
			return only, nil
		}
		if err != nil {
			return only, err
		}
	}
}

func isNull(m json.RawMessage) bool {
	s := strings.TrimSpace(string(m))
	return s == "" || s == "null" || s == "{}" || s == "[]"
}

const clientID = "cell"

func (a *API) domain() *string {
	if a.cfg.Domain == "" {
		return nil
	}
	d := a.cfg.Domain
	return &d
}

func (a *API) sandboxResponse(info manager.Info) e2bapi.Sandbox {
	res := e2bapi.Sandbox{TemplateID: info.TemplateID, SandboxID: info.ID, ClientID: clientID, EnvdVersion: envd.Version, Domain: a.domain()}
	if info.EnvdToken != "" {
		tok := info.EnvdToken
		res.EnvdAccessToken = &tok
	}
	if info.TrafficToken != "" {
		tok := info.TrafficToken
		res.TrafficAccessToken = &tok
	}
	return res
}

func (a *API) detail(info manager.Info, withToken bool) e2bapi.SandboxDetail {
	d := e2bapi.SandboxDetail{
		TemplateID: info.TemplateID, SandboxID: info.ID, ClientID: clientID, StartedAt: info.StartedAt.UTC(),
		EndAt: info.EndAt.UTC(), EnvdVersion: envd.Version, Domain: a.domain(), CPUCount: info.CPUs, MemoryMB: info.MemoryMiB,
		DiskSizeMB: info.DiskMiB, Metadata: info.Metadata, State: info.State, AllowInternetAccess: info.AllowInternet, VolumeMounts: []any{},
	}
	public := !info.Network.PrivateTraffic
	d.Network = e2bapi.NetworkConfig{AllowOut: info.Network.AllowOut, DenyOut: info.Network.DenyOut, AllowPublicTraffic: &public}
	if info.Network.MaskRequestHost != "" {
		mask := info.Network.MaskRequestHost
		d.Network.MaskRequestHost = &mask
	}
	if d.Metadata == nil {
		d.Metadata = map[string]string{}
	}
	if withToken && info.EnvdToken != "" {
		tok := info.EnvdToken
		d.EnvdAccessToken = &tok
	}
	return d
}

func (a *API) create(w http.ResponseWriter, r *http.Request, team string) {
	var req e2bapi.NewSandbox
	if !decode(w, r, &req, false) {
		return
	}
	unsupported := map[string]json.RawMessage{"mcp": req.MCP, "volumeMounts": req.VolumeMounts, "iam": req.IAM, "autoResume": req.AutoResume}
	if req.Network != nil {
		unsupported["network.rules"], unsupported["network.egressProxy"], unsupported["network.httpsPorts"] = req.Network.Rules, req.Network.EgressProxy, req.Network.HTTPSPorts
	}
	for name, v := range unsupported {
		if !isNull(v) {
			writeError(w, http.StatusNotImplemented, fmt.Sprintf("%s: not supported by Cell yet", name))
			return
		}
	}
	if req.TemplateID == "" {
		writeError(w, http.StatusBadRequest, "templateID: required")
		return
	}
	cr := manager.CreateRequest{Team: team, Template: req.TemplateID, Metadata: req.Metadata, EnvVars: req.EnvVars,
		Secure: req.Secure == nil || *req.Secure, AllowInternet: req.AllowInternetAccess == nil || *req.AllowInternetAccess,
		AutoPause: req.AutoPause != nil && *req.AutoPause, AutoPauseMemory: req.AutoPauseMemory == nil || *req.AutoPauseMemory}
	if n := req.Network; n != nil {
		cr.Network = store.Network{AllowOut: n.AllowOut, DenyOut: n.DenyOut,
			PrivateTraffic: n.AllowPublicTraffic != nil && !*n.AllowPublicTraffic}
		if n.MaskRequestHost != nil {
			cr.Network.MaskRequestHost = *n.MaskRequestHost
		}
	}
	if req.Timeout != nil {
		var ok bool
		if cr.Timeout, ok = timeoutField(w, *req.Timeout); !ok {
			return
		}
	}
	if req.DiskSizeMB != nil {
		if *req.DiskSizeMB <= 0 {
			writeError(w, http.StatusBadRequest, "diskSizeMB: must be positive")
			return
		}
		cr.DiskMiB = *req.DiskSizeMB
	}
	info, err := a.cfg.Manager.Create(r.Context(), cr)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, a.sandboxResponse(info))
}

func (a *API) get(w http.ResponseWriter, r *http.Request, team string) {
	info, err := a.cfg.Manager.Get(team, r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.detail(info, true))
}

func (a *API) kill(w http.ResponseWriter, r *http.Request, team string) {
	if err := a.cfg.Manager.Kill(team, r.PathValue("id")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) timeout(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.TimeoutRequest
	if !decode(w, r, &body, false) {
		return
	}
	if body.Timeout == nil {
		writeError(w, http.StatusBadRequest, "timeout: required (seconds)")
		return
	}
	timeout, ok := timeoutField(w, *body.Timeout)
	if !ok {
		return
	}
	if _, err := a.cfg.Manager.SetTimeout(r.Context(), team, r.PathValue("id"), timeout); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) refresh(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.RefreshRequest
	if !decode(w, r, &body, true) {
		return
	}
	d := 60
	if body.Duration != nil {
		d = *body.Duration
	}
	if d < 0 || d > 3600 {
		writeError(w, http.StatusBadRequest, "duration: must be between 0 and 3600 seconds")
		return
	}
	if _, err := a.cfg.Manager.SetTimeout(r.Context(), team, r.PathValue("id"), time.Duration(d)*time.Second); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// connect is POST /sandboxes/{id}/connect: a paused sandbox is resumed (201) to live the body's
// timeout, or its own timeout when the body names none; a running one (200) lives on, its end
// moved later when the body's timeout reaches past it, never earlier.
func (a *API) connect(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.ConnectRequest
	if !decode(w, r, &body, true) {
		return
	}
	id := r.PathValue("id")
	var timeout time.Duration
	if body.Timeout != nil {
		var ok bool
		if timeout, ok = timeoutField(w, *body.Timeout); !ok {
			return
		}
	}
	info, resumed, err := a.cfg.Manager.Resume(r.Context(), team, id, timeout, body.Memory == nil || *body.Memory)
	if err != nil {
		fail(w, err)
		return
	}
	if resumed {
		writeJSON(w, http.StatusCreated, a.sandboxResponse(info))
		return
	}
	if body.Timeout != nil && time.Now().Add(timeout).After(info.EndAt) {
		if info, err = a.cfg.Manager.SetTimeout(r.Context(), team, id, timeout); err != nil {
			fail(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, a.sandboxResponse(info))
}

// timeoutField checks a timeout in whole seconds (a JSON "timeout" field) and converts it; on a
// bad value it answers 400 naming the field. The range is checked on the integer: converted
// first, a huge value overflows time.Duration into a short or negative one.
func timeoutField(w http.ResponseWriter, seconds int) (time.Duration, bool) {
	d, err := timeoutSeconds(seconds)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return 0, false
	}
	return d, true
}

func timeoutSeconds(seconds int) (time.Duration, error) {
	limit := int(manager.MaxTimeout / time.Second)
	if seconds < 0 || seconds > limit {
		return 0, fmt.Errorf("timeout: must be between 0 and %d seconds, got %d", limit, seconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

// filters are the list query parameters.
type filters struct {
	metadata map[string]string
	states   map[string]bool
	limit    int
	after    int64
}

func parseFilters(q url.Values, paged bool) (filters, error) {
	f := filters{limit: 100}
	if raw := q.Get("metadata"); raw != "" {
		vals, err := url.ParseQuery(raw)
		if err != nil {
			return f, fmt.Errorf("metadata: %q is not key=value pairs joined by &: %v", raw, err)
		}
		f.metadata = map[string]string{}
		for k, vs := range vals {
			// The SDK encodes keys and values before joining them; undo that too.
			key, err1 := url.QueryUnescape(k)
			val, err2 := url.QueryUnescape(vs[0])
			if err1 != nil || err2 != nil {
				return f, fmt.Errorf("metadata: bad escaping in %q", raw)
			}
			f.metadata[key] = val
		}
	}
	if raw := q.Get("state"); raw != "" {
		f.states = map[string]bool{}
		for _, s := range strings.Split(raw, ",") {
			switch s {
			case "running", "paused":
				f.states[s] = true
			default:
				return f, fmt.Errorf("state: %q must be running or paused", s)
			}
		}
	}
	if !paged {
		return f, nil
	}
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 100 {
			return f, fmt.Errorf("limit: %q must be an integer from 1 to 100", raw)
		}
		f.limit = n
	}
	if raw := q.Get("nextToken"); raw != "" {
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			return f, fmt.Errorf("nextToken: %q is not a token this server issued", raw)
		}
		f.after = n
	}
	return f, nil
}

func (f filters) match(info manager.Info) bool {
	if f.states != nil && !f.states[info.State] {
		return false
	}
	for k, v := range f.metadata {
		if info.Metadata[k] != v {
			return false
		}
	}
	return info.Seq > f.after
}

func (a *API) listV1(w http.ResponseWriter, r *http.Request, team string) {
	f, err := parseFilters(r.URL.Query(), false)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	out := []e2bapi.SandboxDetail{}
	for _, info := range a.cfg.Manager.List(team) {
		if f.match(info) {
			out = append(out, a.detail(info, false))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) listV2(w http.ResponseWriter, r *http.Request, team string) {
	f, err := parseFilters(r.URL.Query(), true)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	out := []e2bapi.SandboxDetail{}
	var last int64
	more := false
	for _, info := range a.cfg.Manager.List(team) {
		if !f.match(info) {
			continue
		}
		if len(out) == f.limit {
			more = true
			break
		}
		out = append(out, a.detail(info, false))
		last = info.Seq
	}
	if more {
		w.Header().Set("X-Next-Token", strconv.FormatInt(last, 10))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request, team string) {
	id := r.PathValue("id")
	if _, err := a.cfg.Manager.Get(team, id); err != nil {
		fail(w, err)
		return
	}
	hc, err := a.cfg.Manager.Envd(id)
	if err != nil {
		fail(w, err)
		return
	}
	m, err := a.cfg.Manager.EnvdMetrics(r.Context(), id, hc)
	if err != nil {
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	ts := time.Unix(m.Timestamp, 0).UTC()
	ns, _, _ := a.cfg.Manager.NetStats(team, id)
	writeJSON(w, http.StatusOK, []e2bapi.Metric{{Timestamp: ts, TimestampUnix: m.Timestamp, CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, MemCache: m.MemCache, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
		NetBytesIn: ns.BytesIn, NetBytesOut: ns.BytesOut, NetDenied: ns.Denied}})
}

func (a *API) pause(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.PauseRequest
	if !decode(w, r, &body, true) {
		return
	}
	if err := a.cfg.Manager.Pause(r.Context(), team, r.PathValue("id"), body.Memory == nil || *body.Memory); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resume is E2B's deprecated POST /sandboxes/{id}/resume: 201 when resumed, 409 when running.
func (a *API) resume(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.ConnectRequest
	if !decode(w, r, &body, true) {
		return
	}
	var timeout time.Duration
	if body.Timeout != nil {
		var ok bool
		if timeout, ok = timeoutField(w, *body.Timeout); !ok {
			return
		}
	}
	info, resumed, err := a.cfg.Manager.Resume(r.Context(), team, r.PathValue("id"), timeout, body.Memory == nil || *body.Memory)
	if err != nil {
		fail(w, err)
		return
	}
	if !resumed {
		writeError(w, http.StatusConflict, "sandbox "+info.ID+" is already running")
		return
	}
	writeJSON(w, http.StatusCreated, a.sandboxResponse(info))
}

func snapshotResponse(s manager.SnapshotInfo) e2bapi.Snapshot {
	r := e2bapi.Snapshot{SnapshotID: s.ID, Names: []string{}}
	if s.Name != "" {
		r.Names = append(r.Names, s.Name)
	}
	return r
}

func (a *API) snapshot(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.SnapshotRequest
	if !decode(w, r, &body, true) {
		return
	}
	snap, err := a.cfg.Manager.Snapshot(r.Context(), team, r.PathValue("id"), body.Name)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, snapshotResponse(snap))
}

func (a *API) snapshots(w http.ResponseWriter, r *http.Request, team string) {
	q := r.URL.Query()
	out := []e2bapi.Snapshot{}
	for _, s := range a.cfg.Manager.Snapshots(team, q.Get("sandboxID")) {
		if name := q.Get("name"); name != "" && s.Name != name {
			continue
		}
		out = append(out, snapshotResponse(s))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) templateAlias(w http.ResponseWriter, r *http.Request, team string) {
	id, public, err := a.cfg.Manager.TemplateAlias(team, r.PathValue("alias"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e2bapi.TemplateAlias{TemplateID: id, Public: public})
}

func (a *API) deleteTemplate(w http.ResponseWriter, r *http.Request, team string) {
	if err := a.cfg.Manager.DeleteTemplate(team, r.PathValue("tid")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) fork(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.ForkRequest
	if !decode(w, r, &body, false) {
		return
	}
	count := 1
	if body.Count != nil {
		count = *body.Count
	}
	var timeout time.Duration
	if body.Timeout != nil {
		var ok bool
		if timeout, ok = timeoutField(w, *body.Timeout); !ok {
			return
		}
	}
	results, err := a.cfg.Manager.Fork(r.Context(), team, r.PathValue("id"), count, timeout)
	if err != nil {
		fail(w, err)
		return
	}
	out := make([]e2bapi.ForkResult, len(results))
	for i, res := range results {
		if res.Err != nil {
			code, msg, id := answerFor(res.Err)
			if id != "" {
				logError(w, id, res.Err)
			}
			out[i].Error = &e2bapi.Error{Code: code, Message: msg}
			continue
		}
		sr := a.sandboxResponse(res.Info)
		out[i].Sandbox = &sr
	}
	writeJSON(w, http.StatusCreated, out)
}
