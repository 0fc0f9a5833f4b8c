package server

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cellhq/cell/envd/filesystem"
	"github.com/cellhq/cell/pkg/envd"
)

func localTCP(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.Atoi(r.URL.Query().Get("port"))
	if err != nil || port < 1 || port > 65535 {
		filesystem.WriteError(w, http.StatusBadRequest, "port: %q is not a port number", r.URL.Query().Get("port"))
		return
	}
	c, err := dialLoopback(port)
	if err != nil {
		filesystem.WriteError(w, http.StatusBadGateway, "port %d is not open: %v", port, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = c.Close()
		filesystem.WriteError(w, http.StatusInternalServerError, "the connection cannot be taken over")
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		_ = c.Close()
		return
	}
	defer func() { _ = conn.Close() }()
	defer func() { _ = c.Close() }()
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: "+envd.LocalTCPProtocol+"\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(c, brw.Reader) // what the host sent after the request, then the rest
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, _ = io.Copy(conn, c)
	_ = conn.Close() // ends the copy above if the host is still sending
	wg.Wait()
}

// dialLoopback connects to port on 127.0.0.1, or on ::1 when nothing listens there.
func dialLoopback(port int) (net.Conn, error) {
	p := strconv.Itoa(port)
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", p), 5*time.Second)
	if err == nil {
		return c, nil
	}
	if c6, err6 := net.DialTimeout("tcp", net.JoinHostPort("::1", p), 5*time.Second); err6 == nil {
		return c6, nil
	}
	return nil, err
}
