package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/manager"
)

// EnvdPort is the port E2B's SDKs address envd on.
const EnvdPort = 49983

// Routing headers of E2B's SDKs.
const (
	SandboxIDHeader   = "E2b-Sandbox-Id"
	SandboxPortHeader = "E2b-Sandbox-Port"
)

type proxy struct {
	mgr     *manager.Manager
	domain  string
	log     *slog.Logger
	buffers bufferPool
}

func newProxy(mgr *manager.Manager, domain string, log *slog.Logger) *proxy {
	return &proxy{mgr: mgr, domain: domain, log: log, buffers: make(bufferPool, 32)}
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

// sandboxError is the body E2B's edge answers with when a sandbox cannot be reached.
type sandboxError struct {
	SandboxID string `json:"sandboxId"`
	Message   string `json:"message"`
	Code      int    `json:"code"`
}

func badGateway(w http.ResponseWriter, id, msg string) {
	writeJSON(w, http.StatusBadGateway, sandboxError{SandboxID: id, Message: msg, Code: http.StatusBadGateway})
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
		badGateway(w, id, fmt.Sprintf("The sandbox is running but port %d is not open (only envd's port %d is served until networking lands)", n, EnvdPort))
		return
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "envd"
			pr.Out.Host = "envd"
			pr.Out.Header.Del(SandboxIDHeader)
			pr.Out.Header.Del(SandboxPortHeader)
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
