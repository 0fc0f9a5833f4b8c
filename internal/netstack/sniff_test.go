package netstack

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestSniffTLS(t *testing.T) {
	guest, host := net.Pipe()
	defer func() { _ = guest.Close() }()
	go func() {
		c := tls.Client(guest, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true})
		_ = c.Handshake() // never completes: the sniffer only reads the hello
	}()
	name, head, err := sniffName(host, 5*time.Second)
	if err != nil || name != "api.example.com" {
		t.Fatalf("sniffName = %q, %v", name, err)
	}
	if len(head) < 5 || head[0] != 0x16 {
		t.Fatalf("head does not start with the TLS record: % x", head[:min(len(head), 8)])
	}
	// What was consumed is exactly the ClientHello record, to be replayed.
	recLen := int(binary.BigEndian.Uint16(head[3:5])) + 5
	if len(head) != recLen {
		t.Fatalf("consumed %d bytes, the record is %d", len(head), recLen)
	}
	_ = host.Close()
}

func TestSniffHTTP(t *testing.T) {
	guest, host := net.Pipe()
	req := "POST /x HTTP/1.1\r\nHost: api.example.com:8080\r\nContent-Length: 4\r\n\r\nbody"
	go func() { _, _ = io.WriteString(guest, req) }()
	name, head, err := sniffName(host, 5*time.Second)
	if err != nil || name != "api.example.com:8080" {
		t.Fatalf("sniffName = %q, %v", name, err)
	}
	// Everything consumed comes back, in order, to be sent on.
	rest := make([]byte, len(req)-len(head))
	go func() { _ = guest.Close() }()
	_, _ = io.ReadFull(host, rest)
	if got := string(head) + string(rest); !strings.HasPrefix(req, string(head)) || len(got) > len(req) {
		t.Fatalf("head %q is not a prefix of the request", head)
	}
	if !matchHostName(mustRules(t, "api.example.com"), name) || matchHostName(mustRules(t, "other.com"), name) {
		t.Fatal("Host with a port does not match its name")
	}
}

func TestSniffRefusesOther(t *testing.T) {
	for _, in := range [][]byte{[]byte("SSH-2.0-OpenSSH_9.2\r\n"), {0x16, 3, 1, 0, 4, 1, 2, 3, 4}, bytes.Repeat([]byte{'A'}, maxSniff+10)} {
		guest, host := net.Pipe()
		go func() { _, _ = guest.Write(in); _ = guest.Close() }()
		if name, _, err := sniffName(host, 2*time.Second); err == nil {
			t.Errorf("% x...: name %q, want an error", in[:min(len(in), 8)], name)
		}
		_ = host.Close()
	}
	// Silence ends at the timeout.
	guest, host := net.Pipe()
	defer func() { _ = guest.Close() }()
	start := time.Now()
	if _, _, err := sniffName(host, 200*time.Millisecond); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("silent connection: %v after %v", err, time.Since(start))
	}
}

func mustRules(t *testing.T, allow ...string) *Rules {
	t.Helper()
	r, err := Compile(Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: allow})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestFrameGuard(t *testing.T) {
	frame := func(n int) []byte {
		b := make([]byte, 4+n)
		binary.BigEndian.PutUint32(b, uint32(n))
		return b
	}
	ok := append(append(frame(100), frame(maxFrame)...), frame(0)...)
	a, b := net.Pipe()
	go func() { _, _ = a.Write(ok); _ = a.Close() }()
	if n, err := io.Copy(io.Discard, &frameGuard{Conn: b}); err != nil || n != int64(len(ok)) {
		t.Fatalf("valid frames: %d, %v", n, err)
	}
	a, b = net.Pipe()
	go func() { _, _ = a.Write(append(frame(10), frame(maxFrame + 1)[:4]...)); _ = a.Close() }()
	if _, err := io.Copy(io.Discard, &frameGuard{Conn: b}); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized frame: %v", err)
	}
}
