package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cellhq/cell/pkg/envd"
)

func TestLocalTCP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(localTCP))
	defer srv.Close()
	// A server on either loopback is reached: ::1 is tried when 127.0.0.1 refuses.
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) { echoThrough(t, srv, addr) })
	}

	for _, c := range []struct {
		query string
		code  int
		want  string
	}{
		{"?port=0", 400, "port"},
		{"?port=http", 400, "port"},
		{fmt.Sprintf("?port=%d", freePort(t)), 502, "not open"},
	} {
		resp, err := http.Get(srv.URL + envd.LocalTCPPath + c.query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("%s: %d %s, want %d %q", c.query, resp.StatusCode, body, c.code, c.want)
		}
	}
}

// echoThrough runs an echo server on addr and talks to it through srv's envd.LocalTCPPath.
func echoThrough(t *testing.T, srv *httptest.Server, addr string) {
	echo, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = echo.Close() }()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	port := echo.Addr().(*net.TCPAddr).Port
	// The request and the first bytes of the stream in one write: nothing may be lost.
	fmt.Fprintf(conn, "GET %s?port=%d HTTP/1.1\r\nHost: envd\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\nhello ", envd.LocalTCPPath, port, envd.LocalTCPProtocol)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	_, _ = io.WriteString(conn, "world")
	buf := make([]byte, len("hello world"))
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "hello world" {
		t.Fatalf("echo through the stream: %q %v", buf, err)
	}
}

// freePort is a loopback port nothing listens on (just released).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return port
}
