package netstack

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// The guard of a plain HTTP connection admitted by a name rule: every request's head is read
// (bounded) and checked as it passes, its body relayed by its framing to find the next one.

var errHeadTooLong = refuse("an HTTP head longer than %d bytes", maxSniff)

// readHead reads an HTTP head: lines ended by CRLF (a bare CR or LF is refused, as servers
// differ on it), up to and including the empty line, at most limit bytes. io.EOF means the
// stream ended cleanly before a head began.
func readHead(r *bufio.Reader, limit int) ([]byte, error) {
	var head []byte
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, errHeadTooLong
			}
			if err == io.EOF && len(head) == 0 && len(line) == 0 {
				return nil, io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(head)+len(line) > limit {
			return nil, errHeadTooLong
		}
		body := line[:len(line)-1]
		if len(body) == 0 || body[len(body)-1] != '\r' || bytes.IndexByte(body[:len(body)-1], '\r') >= 0 {
			return nil, refuse("an HTTP line not ended by CRLF")
		}
		if len(line) == 2 && len(head) == 0 {
			return nil, refuse("an empty line where an HTTP request should start")
		}
		head = append(head, line...)
		if len(line) == 2 {
			return head, nil
		}
	}
}

// reqHead is an HTTP/1.x request head the guard has checked.
type reqHead struct {
	raw     []byte
	method  string
	hosts   []string // every host the request names (Host, an absolute URI's or CONNECT's)
	chunked bool     // the body is chunked
	length  int64    // else its length
	tunnel  bool     // an Upgrade (WebSocket) or CONNECT: after the response, maybe no more HTTP
	connect bool
}

// hasBody says whether the request carries a body.
func (h *reqHead) hasBody() bool { return h.chunked || h.length > 0 }

// parseRequestHead checks a request head read by readHead. It refuses what a server could frame
// or route differently from the guard: folded lines, header names that some servers map to the
// framing or routing ones ("Transfer_Encoding"), both Content-Length and Transfer-Encoding, a
// transfer coding other than chunked, several Host headers, an upgrade to anything but WebSocket
// (an h2c upgrade would carry requests for any host). It also refuses the bodies a server may
// ignore, and then read as the next request (a request for any host, behind a shared front
// end): a body on a method that has none (GET, HEAD, OPTIONS, DELETE, TRACE, CONNECT), and an
// Expect header (a server may answer it with a final status and never read the body).
func parseRequestHead(head []byte) (*reqHead, error) {
	lines := bytes.Split(head[:len(head)-2], []byte("\r\n"))
	for _, l := range lines[1:] {
		if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
			return nil, refuse("a folded HTTP header line")
		}
		if name, _, ok := bytes.Cut(l, []byte(":")); ok && bytes.IndexByte(name, '_') >= 0 {
			switch textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(string(name), "_", "-")) {
			case "Host", "Content-Length", "Transfer-Encoding", "Upgrade", "Connection", "Expect":
				return nil, refuse("HTTP header %q", name)
			}
		}
	}
	target, err := checkRequestLine(string(lines[0]))
	if err != nil {
		return nil, err
	}
	req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16))
	if err != nil {
		return nil, refuse("%w: %w", errNoHost, err)
	}
	tp := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16))
	if _, err := tp.ReadLine(); err != nil {
		return nil, err
	}
	mh, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, refuse("%w: %w", errNoHost, err)
	}
	h := &reqHead{raw: head, method: req.Method}
	if len(mh["Host"]) != 1 {
		return nil, refuse("%w: %d Host headers", errNoHost, len(mh["Host"]))
	}
	host, ok := splitHost(mh["Host"][0])
	if !ok {
		return nil, refuse("%w: Host %q", errNoHost, mh["Host"][0])
	}
	h.hosts = append(h.hosts, host)
	if target != "" {
		h.hosts = append(h.hosts, target)
	}
	te, cl := mh["Transfer-Encoding"], mh["Content-Length"]
	switch {
	case len(te) > 0 && len(cl) > 0:
		return nil, refuse("an HTTP request with both Content-Length and Transfer-Encoding")
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") || !req.ProtoAtLeast(1, 1) {
			return nil, refuse("HTTP Transfer-Encoding %q", te)
		}
		h.chunked = true
	case len(cl) > 0:
		for _, v := range cl {
			k, err := strconv.ParseInt(v, 10, 63)
			if err != nil || k < 0 || v != cl[0] || strings.Trim(v, "0123456789") != "" {
				return nil, refuse("HTTP Content-Length %q", cl)
			}
			h.length = k
		}
	}
	if len(mh["Expect"]) > 0 {
		return nil, refuse("HTTP Expect %q: a server may answer before the body and read the body as requests", mh["Expect"])
	}
	if h.hasBody() {
		switch req.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete, http.MethodTrace, http.MethodConnect:
			return nil, refuse("an HTTP %s request with a body: a server may ignore it and read it as requests", req.Method)
		}
	}
	if up := mh["Upgrade"]; len(up) > 0 {
		for _, v := range up {
			for _, p := range strings.Split(v, ",") {
				proto, _, _ := strings.Cut(strings.TrimSpace(p), "/")
				if !strings.EqualFold(proto, "websocket") {
					return nil, refuse("HTTP Upgrade to %q: a name rule admits WebSocket upgrades only", p)
				}
			}
		}
		h.tunnel = true
	}
	if req.Method == http.MethodConnect {
		h.tunnel, h.connect = true, true
	}
	return h, nil
}

// checkRequestLine checks an HTTP request line (without its CRLF): a method in upper case
// (servers differ on whether "get" is GET), a request target and HTTP/1.0 or HTTP/1.1, one
// space between each. The target must be in a form every server
// reads alike (RFC 9112 3.2): origin-form ("/path?query", not "//", which some read as a host),
// absolute-form with scheme http, https, ws or wss and no userinfo ("http://evil@allowed/" is
// read as either host), "*" for OPTIONS only, authority-form ("host:port") for CONNECT only;
// only visible ASCII, no fragment, no backslash (which some servers take for a slash). It
// returns the host an absolute-form or authority-form target names, else "".
func checkRequestLine(line string) (string, error) {
	method, rest, _ := strings.Cut(line, " ")
	target, version, ok := strings.Cut(rest, " ")
	if !ok || method == "" || target == "" {
		return "", refuse("%w: request line %q", errNoHost, line)
	}
	if strings.Trim(method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
		return "", refuse("HTTP method %q: upper-case letters, digits, - and _ only", method)
	}
	if version != "HTTP/1.1" && version != "HTTP/1.0" {
		return "", refuse("%w: version %q (HTTP/1.0 and HTTP/1.1 only)", errNoHost, version)
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c >= 0x7f || c == '#' || c == '\\' {
			return "", refuse("HTTP request target %q: byte %#02x", target, c)
		}
	}
	switch {
	case method == http.MethodConnect:
		host, ok := splitHost(target)
		if !ok || !strings.Contains(target, ":") {
			return "", refuse("HTTP CONNECT target %q: host:port only", target)
		}
		return host, nil
	case target == "*":
		if method != http.MethodOptions {
			return "", refuse("HTTP request target * for %s (OPTIONS only)", method)
		}
		return "", nil
	case target[0] == '/':
		if strings.HasPrefix(target, "//") {
			return "", refuse("HTTP request target %q: origin-form starts with a single /", target)
		}
		return "", nil
	}
	scheme, rest, ok := strings.Cut(target, "://")
	switch strings.ToLower(scheme) {
	case "http", "https", "ws", "wss":
	default:
		return "", refuse("HTTP request target %q: neither /path nor an http, https, ws or wss URI", target)
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority = rest[:i]
	}
	host, valid := splitHost(authority)
	if !ok || !valid {
		return "", refuse("HTTP request target %q: the host must be a name (no userinfo)", target)
	}
	return host, nil
}

// errBodySent ends the request side after a request with a body: nothing more is sent on that
// connection, and the response side ends it after that request's response (errAnswered).
var errBodySent = errors.New("a request with a body was sent: the connection ends after its response")

// relayRequests copies HTTP/1.x requests from src to dst unchanged, first (already read) then
// each one after it, calling admit with the hosts each names and then sent with the request
// before sending it on (false: the response side ended, and so does the relay). After an
// upgrade or CONNECT (only as the first request) it waits for tunnelled: if the server opened
// the tunnel, the rest is copied as it comes. It returns nil when src ends between requests,
// errBodySent after a request with a body.
//
// A server may ignore a body the guard framed (one it does not expect, or a request it answers
// at once) and read it as the next request, which may name any host the server's front end
// serves. So no request follows one with a body, and the response side ends the connection
// once that request's response is complete: if the server read requests out of the body, the
// guest never sees their answers (and the next request goes on a new connection, checked from
// its start).
func relayRequests(dst io.Writer, src *bufio.Reader, first *reqHead, admit func(hosts []string) error, sent func(*reqHead) bool, tunnelled func() bool) error {
	rq := first
	for i := 0; ; i++ {
		if rq == nil {
			head, err := readHead(src, maxSniff)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if rq, err = parseRequestHead(head); err != nil {
				return err
			}
		}
		if err := admit(rq.hosts); err != nil {
			return err
		}
		if rq.tunnel && i > 0 {
			return refuse("an upgrade or CONNECT after a connection's first request (under a name rule, it must come first)")
		}
		if !sent(rq) {
			return errRelayEnded
		}
		if _, err := dst.Write(rq.raw); err != nil {
			return err
		}
		var err error
		if rq.chunked {
			err = relayChunked(dst, src)
		} else if rq.length > 0 {
			var k int64
			k, err = io.CopyN(dst, src, rq.length)
			if err == io.EOF && k < rq.length {
				err = io.ErrUnexpectedEOF
			}
		}
		if err != nil {
			return err
		}
		if rq.hasBody() {
			return errBodySent
		}
		if rq.tunnel && tunnelled() {
			_, err := io.Copy(dst, src)
			return err
		}
		rq = nil
	}
}

// errRelayEnded is the request side's end when the response side ended first.
var errRelayEnded = errors.New("the server's side of the connection ended")

// relayChunked copies a chunked body, trailer included, checking its framing.
func relayChunked(dst io.Writer, src *bufio.Reader) error {
	for {
		line, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		if len(line) < 3 || line[len(line)-2] != '\r' || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
			return refuse("an HTTP chunk line not ended by CRLF")
		}
		hex, _, _ := bytes.Cut(line[:len(line)-2], []byte(";"))
		if len(hex) == 0 || len(hex) > 15 {
			return refuse("HTTP chunk size %q", hex)
		}
		size, err := strconv.ParseUint(string(hex), 16, 62)
		if err != nil {
			return refuse("HTTP chunk size %q", hex)
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if size == 0 {
			// The trailer: header lines up to an empty one.
			for {
				line, err := src.ReadSlice('\n')
				if err != nil {
					return chunkErr(err)
				}
				if len(line) < 2 || line[len(line)-2] != '\r' || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
					return refuse("an HTTP trailer line not ended by CRLF")
				}
				if len(line) > 2 && (line[0] == ' ' || line[0] == '\t') {
					return refuse("a folded HTTP trailer line")
				}
				if name, _, ok := bytes.Cut(line, []byte(":")); len(line) > 2 && (!ok || !isToken(name)) {
					return refuse("an HTTP trailer line %q that is not a header field", line)
				}
				if _, err := dst.Write(line); err != nil {
					return err
				}
				if len(line) == 2 {
					return nil
				}
			}
		}
		if _, err := io.CopyN(dst, src, int64(size)); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		var crlf [2]byte
		if _, err := io.ReadFull(src, crlf[:]); err != nil {
			return err
		}
		if crlf != [2]byte{'\r', '\n'} {
			return refuse("an HTTP chunk not ended by CRLF")
		}
		if _, err := dst.Write(crlf[:]); err != nil {
			return err
		}
	}
}

// isToken says whether b is an HTTP token (RFC 9110 5.6.2), as a header field name must be.
func isToken(b []byte) bool {
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return len(b) > 0
}

// chunkErr is the error of a chunk or trailer line that could not be read.
func chunkErr(err error) error {
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return refuse("an HTTP chunk or trailer line longer than the guard reads")
	case err == io.EOF:
		return io.ErrUnexpectedEOF
	}
	return err
}

// maxResponseHead bounds a response head (a line of it: the response side's buffer).
const maxResponseHead = 64 << 10

// errAnswered ends the response side after the response to a request with a body.
var errAnswered = errors.New("the response to a request with a body is complete")

// relayResponses copies the server's side to dst, one response for each request sent (in
// order), each read by its framing as a client would: interim 1xx responses first; no body
// after HEAD, 204 or 304; a chunked body, one of Content-Length, or one up to the end. After
// the response to a request with a body it returns errAnswered (nothing more of the server's
// is relayed: see relayRequests). For a request that asked for a tunnel (the first only), it
// sends on tunnel whether the server opened it (101 Switching Protocols, or 2xx to a CONNECT),
// and then copies the rest as it comes. A response it cannot frame ends the connection;
// tunnel is closed when it returns. Once sent is closed and every response relayed, what the
// server sends is copied as it comes (no request is left that it could answer).
func relayResponses(dst io.Writer, src io.Reader, sent <-chan *reqHead, tunnel chan<- bool) error {
	defer close(tunnel)
	br := bufio.NewReaderSize(src, maxResponseHead)
	for {
		// The server's end between responses is passed on at once (a client reading to the
		// end, an HTTP/1.0 one, waits for it), without waiting for a request.
		if _, err := br.Peek(1); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		rq, ok := <-sent
		if !ok {
			// No request is left that the server could answer.
			_, err := io.Copy(dst, br)
			return err
		}
		var resp *http.Response
		for {
			head, err := readResponseHead(br)
			if err != nil {
				return err
			}
			resp, err = readResponse(head, rq.method)
			if err != nil {
				return err
			}
			if _, err := dst.Write(head); err != nil {
				return err
			}
			if code := resp.StatusCode; code < 100 || code >= 200 || code == 101 {
				break
			}
		}
		code := resp.StatusCode
		if rq.tunnel {
			opened := rq.connect && code >= 200 && code < 300 || !rq.connect && code == 101
			tunnel <- opened
			if opened {
				_, err := io.Copy(dst, br)
				return err
			}
		}
		var err error
		switch {
		case rq.method == http.MethodHead || code == 101 || code == 204 || code == 304:
		case len(resp.TransferEncoding) > 0:
			err = relayChunked(dst, br)
		case resp.ContentLength >= 0:
			var k int64
			k, err = io.CopyN(dst, br, resp.ContentLength)
			if err == io.EOF && k < resp.ContentLength {
				err = io.ErrUnexpectedEOF
			}
		default:
			// Delimited by the end of the connection: nothing can follow it.
			_, err = io.Copy(dst, br)
			return err
		}
		if err != nil {
			return err
		}
		if rq.hasBody() {
			return errAnswered
		}
	}
}

// readResponse parses a response head to a request with method as net/http's client does,
// refusing what clients may frame otherwise: both Transfer-Encoding and Content-Length, a
// Transfer-Encoding in an HTTP/1.0 response (net/http ignores it, others may not), a transfer
// coding other than chunked.
func readResponse(head []byte, method string) (*http.Response, error) {
	tp := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16))
	status, err := tp.ReadLine()
	if err != nil {
		return nil, err
	}
	mh, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, refuse("an HTTP response the guard cannot frame: %w", err)
	}
	te := mh["Transfer-Encoding"]
	if len(te) > 0 && (len(mh["Content-Length"]) > 0 || !strings.HasPrefix(status, "HTTP/1.1 ")) {
		return nil, refuse("an HTTP response with Transfer-Encoding and Content-Length, or in HTTP/1.0")
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16), &http.Request{Method: method})
	if err != nil {
		return nil, refuse("an HTTP response the guard cannot frame: %w", err)
	}
	if len(te) > 0 && (len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked") {
		return nil, refuse("HTTP response Transfer-Encoding %q", te)
	}
	return resp, nil
}

// readResponseHead reads a response head, up to and including its empty line (lines may end
// in LF alone, as clients accept), at most maxResponseHead bytes.
func readResponseHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, refuse("an HTTP response head longer than %d bytes", maxResponseHead)
			}
			if err == io.EOF && len(head)+len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(head)+len(line) > maxResponseHead {
			return nil, refuse("an HTTP response head longer than %d bytes", maxResponseHead)
		}
		head = append(head, line...)
		if len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "" && len(head) > len(line) {
			return head, nil
		}
	}
}
