package netstack

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// maxSniff bounds what is read from a connection before its name is known.
const maxSniff = 16 << 10

// sniffName reads the start of a guest connection and returns the name it is for: the TLS
// ClientHello's server name, or a plain HTTP request's Host. It returns the bytes it consumed,
// which must be sent on first. An error means neither could be found in time.
func sniffName(c net.Conn, timeout time.Duration) (name string, head []byte, err error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	rec := &recorder{r: io.LimitReader(c, maxSniff)}
	first := make([]byte, 1)
	if _, err := io.ReadFull(rec, first); err != nil {
		return "", rec.buf.Bytes(), err
	}
	if first[0] == 0x16 { // TLS handshake record
		name, err := clientHelloName(rec)
		return name, rec.buf.Bytes(), err
	}
	req, err := http.ReadRequest(bufio.NewReader(io.MultiReader(bytes.NewReader(first), rec)))
	if err != nil {
		return "", rec.buf.Bytes(), errors.New("neither TLS nor an HTTP request")
	}
	// The bufio reader may have read past the header; rec holds every byte consumed.
	return req.Host, rec.buf.Bytes(), nil
}

// clientHelloName parses a ClientHello with crypto/tls and stops the handshake right after.
func clientHelloName(rec *recorder) (string, error) {
	var name string
	errStop := errors.New("stop")
	conn := tls.Server(&readOnlyConn{r: io.MultiReader(bytes.NewReader(rec.buf.Bytes()), rec)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name = h.ServerName
			return nil, errStop
		},
	})
	err := conn.Handshake()
	if name == "" {
		if err == nil {
			err = errors.New("no server name")
		}
		return "", err
	}
	return name, nil
}

// recorder keeps every byte read through it.
type recorder struct {
	r   io.Reader
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.buf.Write(p[:n])
	return n, err
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
