package netstack

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// A connection admitted only by a name rule must say, before it is dialled, which host it is
// for: the TLS ClientHello's server name, or a plain HTTP request's Host. It is then relayed by
// a guard that keeps checking: every later HTTP request on it (keep-alive) must name an allowed
// host too, and a TLS ClientHello sent again in clear (after a TLS 1.3 HelloRetryRequest) must
// name one as well. What the guard cannot see (TLS 1.2 renegotiation, encrypted) is the server's
// business.

// maxSniff bounds what is read before a connection's name is known: one TLS ClientHello, or one
// HTTP request head; it is also the bound of every later request head and handshake message.
const maxSniff = 16 << 10

// guestReaderSize is the buffer of a name-admitted connection's guest side: a whole head's
// line fits.
const guestReaderSize = maxSniff + 64

// sniffed is what the start of a connection says.
type sniffed struct {
	tls       bool
	name      string   // the host name asked for: lower case, no port, well formed
	head      []byte   // TLS: the bytes consumed (the ClientHello's records), to be sent on first
	earlyData bool     // TLS: the ClientHello offered early data
	req       *reqHead // HTTP: the first request's head, not yet sent on
}

// refusal is an error that refuses a connection by policy (as opposed to one ending by itself).
type refusal struct{ error }

func (r refusal) Unwrap() error { return r.error }

func refuse(format string, a ...any) error { return refusal{fmt.Errorf(format, a...)} }

// errNoHost is a connection that does not say which host it is for in a form the guard reads.
var errNoHost = errors.New("neither a TLS ClientHello with a server name nor an HTTP/1.x request with a Host")

// sniffName reads the start of a guest connection from r (a reader of at least guestReaderSize
// bytes) within timeout and says which host it is for.
func sniffName(c net.Conn, r *bufio.Reader, timeout time.Duration) (sniffed, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	return sniff(r)
}

func sniff(r *bufio.Reader) (sniffed, error) {
	first, err := r.Peek(1)
	if err != nil {
		return sniffed{}, err
	}
	if first[0] == 0x16 { // a TLS handshake record
		h, head, err := readClientHello(r)
		return sniffed{tls: true, name: h.name, head: head, earlyData: h.earlyData}, err
	}
	head, err := readHead(r, maxSniff)
	if err != nil {
		return sniffed{}, refuse("%w: %w", errNoHost, err)
	}
	req, err := parseRequestHead(head)
	if err != nil {
		return sniffed{}, err
	}
	return sniffed{name: req.hosts[0], req: req}, nil
}

// readClientHello reads the records of a connection's first handshake message, which must be
// a ClientHello alone, and returns what it says and the bytes read.
func readClientHello(r *bufio.Reader) (helloInfo, []byte, error) {
	var head, hs []byte
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return helloInfo{}, head, err
		}
		size := int(binary.BigEndian.Uint16(hdr[3:]))
		if hdr[0] != 0x16 || hdr[1] != 3 || size == 0 || size > 1<<14 {
			return helloInfo{}, head, refuse("not a TLS handshake record")
		}
		head = append(head, hdr[:]...)
		start := len(head)
		head = append(head, make([]byte, size)...)
		if _, err := io.ReadFull(r, head[start:]); err != nil {
			return helloInfo{}, head, err
		}
		hs = append(hs, head[start:]...)
		if len(hs) > maxSniff {
			return helloInfo{}, head, refuse("ClientHello longer than %d bytes", maxSniff)
		}
		if len(hs) < 4 {
			continue
		}
		if hs[0] != 1 {
			return helloInfo{}, head, refuse("the first handshake message is not a ClientHello")
		}
		total := 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
		if total > maxSniff {
			return helloInfo{}, head, refuse("ClientHello longer than %d bytes", maxSniff)
		}
		if len(hs) < total {
			continue
		}
		if len(hs) > total {
			return helloInfo{}, head, refuse("the ClientHello's records carry more than the ClientHello")
		}
		h, err := parseClientHello(hs)
		return h, head, err
	}
}

// Extensions a ClientHello under a name rule may not carry: with Encrypted Client Hello the
// server name the guard reads is only the outer one (the client-facing server's public name),
// and a server holding the ECH key (a CDN's) routes by the inner one, which may be any name it
// serves. RFC 9849's codepoint, the implementation drafts' (08 to 12) and ESNI's (draft 02).
// A browser's GREASE ECH is refused too: it cannot be told from the real thing.
func hidesServerName(ext uint16) bool {
	return ext == 0xfe0d || ext >= 0xfe08 && ext <= 0xfe0c || ext == 0xffce
}

// extensionEarlyData is the ClientHello's early_data extension (RFC 8446 4.2.10).
const extensionEarlyData = 42

// helloInfo is what the guard reads from a ClientHello.
type helloInfo struct {
	name      string // the server name: lower case, no port, well formed
	earlyData bool   // the client may send 0-RTT application data before the ServerHello
}

// parseClientHello parses a ClientHello handshake message (type and length included) with
// crypto/tls: its server name must be a well-formed host name, and it may not hide another
// (Encrypted Client Hello).
func parseClientHello(msg []byte) (helloInfo, error) {
	var recs []byte
	for rest := msg; len(rest) > 0; {
		k := min(len(rest), 1<<14)
		recs = append(recs, 0x16, 3, 1, byte(k>>8), byte(k))
		recs = append(recs, rest[:k]...)
		rest = rest[k:]
	}
	var name string
	var exts []uint16
	var got bool
	errStop := errors.New("stop")
	conn := tls.Server(&readOnlyConn{r: bytes.NewReader(recs)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name, exts, got = h.ServerName, h.Extensions, true
			return nil, errStop
		},
	})
	err := conn.Handshake()
	if !got {
		return helloInfo{}, refuse("not a ClientHello: %w", err)
	}
	var h helloInfo
	for _, e := range exts {
		if hidesServerName(e) {
			return helloInfo{}, refuse("a ClientHello with Encrypted Client Hello (extension %#04x): the server name %q may not be the one the server uses", e, name)
		}
		if e == extensionEarlyData {
			h.earlyData = true
		}
	}
	host, ok := splitHost(name)
	if !ok || strings.Contains(name, ":") {
		return helloInfo{}, refuse("ClientHello without a well-formed server name (%q)", name)
	}
	h.name = host
	return h, nil
}

// readOnlyConn is a net.Conn that reads from r and discards writes (the TLS alert).
type readOnlyConn struct {
	net.Conn
	r io.Reader
}

func (c *readOnlyConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *readOnlyConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *readOnlyConn) Close() error                     { return nil }
func (c *readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c *readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (c *readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
