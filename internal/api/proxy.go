package api

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/pkg/e2bapi"
	"github.com/cellhq/cell/pkg/envd"
)

// EnvdPort is the port E2B's SDKs address envd on.
const EnvdPort = 49983

// Routing headers of E2B's SDKs.
const (
	SandboxIDHeader   = "E2b-Sandbox-Id"
	SandboxPortHeader = "E2b-Sandbox-Port"
)

// TrafficTokenHeader carries a sandbox's traffic access token to its exposed ports.
const TrafficTokenHeader = "E2b-Traffic-Access-Token"

// sandboxes is what the proxy needs of the manager: how to reach a running sandbox.
type sandboxes interface {
	Envd(id string) (*http.Client, error)
	Port(id string, port uint16) (manager.PortTarget, error)
	Get(team, id string) (manager.Info, error)
	FindRunning(match func(token string) bool) string
}

type proxy struct {
	mgr     sandboxes
	domain  string
	log     *slog.Logger
	buffers bufferPool
	// ports reaches guest ports; connections are pooled per sandbox and port (the dial address
	// is "<id>:<port>").
	ports *http.Transport
	// streams bounds the requests in flight to sandboxes.
	streams *streamLimits
	// bodyIdle is how long a proxied request's body may send nothing before its read fails.
	bodyIdle time.Duration
}

func newProxy(mgr sandboxes, domain string, log *slog.Logger) *proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &proxy{mgr: mgr, domain: domain, log: log, buffers: make(bufferPool, 32),
		streams: newStreamLimits(DefaultMaxStreams, DefaultMaxSandboxStreams), bodyIdle: ProxyBodyIdle}
	p.ports = &http.Transport{
		DialContext:         p.dialPort,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	return p
}

// errPortClosed is a guest port nothing listens on.
var errPortClosed = errors.New("port is not open")

func (p *proxy) dialPort(ctx context.Context, _, addr string) (net.Conn, error) {
	id, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, err
	}
	t, err := p.mgr.Port(id, uint16(port))
	if err != nil {
		return nil, err
	}
	c, err := t.Dial(ctx)
	if err != nil {
		if strings.Contains(err.Error(), "refused") {
			return nil, fmt.Errorf("%w: %w", errPortClosed, err)
		}
		return nil, err
	}
	return c, nil
}

// bufferPool lends the proxy's 256 KiB copy buffers; it keeps at most cap of them.
type bufferPool chan []byte

func (b bufferPool) Get() []byte {
	select {
	case buf := <-b:
		return buf
	default:
		return make([]byte, 256<<10)
	}
}

func (b bufferPool) Put(buf []byte) {
	select {
	case b <- buf:
	default:
	}
}

// target says whether r is for a sandbox and which: by the E2B headers, else by a Host of the
// form {port}-{id}.{domain} (never for a bare IP or localhost).
func (p *proxy) target(r *http.Request) (id string, port string, ok bool) {
	if id := r.Header.Get(SandboxIDHeader); id != "" {
		port := r.Header.Get(SandboxPortHeader)
		if port == "" {
			port = strconv.Itoa(EnvdPort)
		}
		return id, port, true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "" || host == "localhost" || net.ParseIP(strings.Trim(host, "[]")) != nil {
		return "", "", false
	}
	label, rest, found := strings.Cut(host, ".")
	if !found || (p.domain != "" && rest != p.domain) {
		return "", "", false
	}
	port, id, found = strings.Cut(label, "-")
	if !found {
		return "", "", false
	}
	if _, err := strconv.Atoi(port); err != nil {
		return "", "", false
	}
	return id, port, true
}

func badGateway(w http.ResponseWriter, id, msg string) {
	writeJSON(w, http.StatusBadGateway, e2bapi.SandboxError{SandboxID: id, Message: msg, Code: http.StatusBadGateway})
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request, id, port string) {
	if err := ids.Validate("sandbox id", id); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %v", SandboxIDHeader, err))
		return
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %q is not a port number", SandboxPortHeader, port))
		return
	}
	hc, err := p.mgr.Envd(id)
	if err != nil {
		if errors.Is(err, manager.ErrNotFound) {
			badGateway(w, id, "The sandbox was not found")
			return
		}
		badGateway(w, id, err.Error())
		return
	}
	if n != EnvdPort {
		p.servePort(w, r, id, n)
		return
	}
	release, ok := p.streams.acquire(w, id, "envd")
	if !ok {
		return
	}
	defer release()
	p.limitBody(w, r)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "envd"
			pr.Out.Host = "envd"
			pr.Out.Header.Del(SandboxIDHeader)
			pr.Out.Header.Del(SandboxPortHeader)
			stripCredentials(pr.Out.Header, true)
		},
		Transport: hc.Transport,
		// Responses without a length (Connect streams, gzip) are flushed at every write by
		// ReverseProxy itself; files with a length are copied in large buffers.
		BufferPool: p.buffers,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.log.Debug("proxy error", "sandbox", id, "path", r.URL.Path, "err", err)
			if _, gone := p.mgr.Envd(id); gone != nil {
				badGateway(w, id, "The sandbox was not found")
				return
			}
			badGateway(w, id, "envd did not answer: "+err.Error())
		},
	}
	rp.ServeHTTP(w, r)
}

// apiKeyRE finds a Cell API key (auth's form) in a header value.
var apiKeyRE = regexp.MustCompile(auth.Prefix + `[0-9a-f]{40}`)

// stripCredentials removes from a request on its way into a sandbox what the guest must never
// see: the client's Cell API key (X-API-KEY, or Authorization carrying one, also inside Basic
// credentials) and the traffic token; for a port (not envd), envd's access token too. What the
// guest needs stays: envd's X-Access-Token and E2B's Basic user name for envd, the client's own
// Authorization and cookies for a server in the sandbox.
func stripCredentials(h http.Header, toEnvd bool) {
	h.Del("X-API-KEY")
	h.Del(TrafficTokenHeader)
	if !toEnvd {
		h.Del(envd.AccessTokenHeader)
	}
	auths := h.Values("Authorization")
	h.Del("Authorization")
	for _, v := range auths {
		if !carriesAPIKey(v) {
			h.Add("Authorization", v)
		}
	}
}

// carriesAPIKey says whether an Authorization value holds something of an API key's form.
func carriesAPIKey(v string) bool {
	if apiKeyRE.MatchString(v) {
		return true
	}
	scheme, cred, _ := strings.Cut(strings.TrimSpace(v), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return false
	}
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	return err == nil && apiKeyRE.Match(dec)
}

// tokenMatches compares a presented secret with the expected one in constant time (a different
// length answers at once: the length of Cell's tokens is no secret); an empty expected token
// never matches.
func tokenMatches(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// limitBody makes a proxied request's body fail once the client has sent nothing for bodyIdle:
// an upload may take as long as it keeps coming, a client that stalls does not hold the
// connection, the stream and the guest's handler forever.
func (p *proxy) limitBody(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody || p.bodyIdle <= 0 {
		return
	}
	r.Body = &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: p.bodyIdle}
}

// idleBody is a request body with a deadline for each read.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		// The body is done: the connection's later reads (net/http's watch for the client going
		// away, the next request) must not inherit the deadline.
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// serveSigned proxies a signed /files URL that names no sandbox (E2B's SDKs make such URLs when
// pointed at Cell with E2B_SANDBOX_URL: the sandbox is in neither the host nor a header) to the
// running sandbox whose envd access token signed it. envd checks the signature again.
func (p *proxy) serveSigned(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	}
	var exp int64
	if s := q.Get("signature_expiration"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("signature_expiration: %q is not a unix time", s))
			return
		}
		exp = n
	}
	sig := []byte(q.Get("signature"))
	id := p.mgr.FindRunning(func(token string) bool {
		want := envd.Sign(q.Get("path"), op, q.Get("username"), token, exp)
		return subtle.ConstantTimeCompare(sig, []byte(want)) == 1
	})
	if id == "" {
		writeError(w, http.StatusUnauthorized, "signature: no running sandbox signed this URL (name the sandbox with the "+SandboxIDHeader+" header, or a Host of the form {port}-{id}.{domain})")
		return
	}
	p.serve(w, r, id, strconv.Itoa(EnvdPort))
}

// servePort proxies a request (HTTP/1.1, streamed, or a WebSocket upgrade) to a port the guest
// listens on, reached through the sandbox's network.
func (p *proxy) servePort(w http.ResponseWriter, r *http.Request, id string, port int) {
	t, err := p.mgr.Port(id, uint16(port))
	if err != nil {
		badGateway(w, id, "The sandbox was not found")
		return
	}
	if t.TrafficToken != "" && !tokenMatches(r.Header.Get(TrafficTokenHeader), t.TrafficToken) {
		writeJSON(w, http.StatusForbidden, e2bapi.SandboxError{SandboxID: id, Code: http.StatusForbidden,
			Message: "The sandbox requires the " + strings.ToLower(TrafficTokenHeader) + " header (its allowPublicTraffic is false)"})
		return
	}
	release, ok := p.streams.acquire(w, id, "port")
	if !ok {
		return
	}
	defer release()
	p.limitBody(w, r)
	mask := ""
	if info, err := p.mgr.Get("", id); err == nil {
		mask = info.Network.MaskRequestHost
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = net.JoinHostPort(id, strconv.Itoa(port))
			pr.Out.Host = pr.In.Host
			if mask != "" {
				pr.Out.Host = strings.ReplaceAll(mask, "${PORT}", strconv.Itoa(port))
			}
			pr.Out.Header.Del(SandboxIDHeader)
			pr.Out.Header.Del(SandboxPortHeader)
			stripCredentials(pr.Out.Header, false)
			pr.SetXForwarded()
		},
		Transport:     p.ports,
		BufferPool:    p.buffers,
		FlushInterval: -1, // a server's stream (SSE, chunks) reaches the client as it comes
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.log.Debug("port proxy error", "sandbox", id, "port", port, "err", err)
			if errors.Is(err, errPortClosed) {
				writeJSON(w, http.StatusBadGateway, e2bapi.PortError{SandboxID: id, Port: port, Code: http.StatusBadGateway,
					Message: "The sandbox is running but port is not open"})
				return
			}
			badGateway(w, id, fmt.Sprintf("port %d did not answer: %v", port, err))
		},
	}
	rp.ServeHTTP(w, r)
}
