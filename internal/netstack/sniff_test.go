package netstack

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// clientHello returns the records of the ClientHello crypto/tls sends for serverName.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	guest, host := net.Pipe()
	defer func() { _ = host.Close() }()
	go func() {
		c := tls.Client(guest, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
		_ = c.Handshake() // never completes: only the hello is read
		_ = guest.Close()
	}()
	_, head, err := readClientHello(bufio.NewReaderSize(host, guestReaderSize))
	if err != nil && serverName != "" {
		t.Fatal(err)
	}
	return head
}

func TestSniffTLS(t *testing.T) {
	hello := clientHello(t, "api.example.com")
	// What follows the hello (the client's next records) is left for the relay.
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(hello), strings.NewReader("\x14\x03\x03\x00\x01\x01")), guestReaderSize)
	s, err := sniff(r)
	if err != nil || !s.tls || s.name != "api.example.com" {
		t.Fatalf("sniff = %+v, %v", s, err)
	}
	// What was consumed is exactly the ClientHello record, to be replayed.
	recLen := int(binary.BigEndian.Uint16(s.head[3:5])) + 5
	if len(s.head) != recLen || !bytes.Equal(s.head, hello) {
		t.Fatalf("consumed %d bytes, the record is %d", len(s.head), recLen)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "\x14\x03\x03\x00\x01\x01" {
		t.Fatalf("left %q", rest)
	}
}

func TestSniffHTTP(t *testing.T) {
	req := "POST /x HTTP/1.1\r\nHost: API.example.com:8080\r\nContent-Length: 4\r\n\r\nbody"
	r := bufio.NewReaderSize(strings.NewReader(req), guestReaderSize)
	s, err := sniff(r)
	if err != nil || s.tls || s.name != "api.example.com" || s.req.length != 4 {
		t.Fatalf("sniff = %+v, %v", s, err)
	}
	// The head is kept to be sent on; the body is still to be read.
	if rest, _ := io.ReadAll(r); string(s.req.raw)+string(rest) != req {
		t.Fatalf("head %q + rest %q is not the request", s.req.raw, rest)
	}
	if !matchHostName(mustRules(t, "api.example.com"), "api.example.com:8080") || matchHostName(mustRules(t, "other.com"), "api.example.com") {
		t.Fatal("Host with a port does not match its name")
	}
}

func TestSniffRefusesOther(t *testing.T) {
	for _, in := range []string{
		"SSH-2.0-OpenSSH_9.2\r\n",
		"\x16\x03\x01\x00\x04\x01\x02\x03\x04",
		strings.Repeat("A", maxSniff+10),
		"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",       // an address, not a name
		"GET / HTTP/1.1\r\nHost: a.com@evil.com\r\n\r\n", // not a host name
		"GET / HTTP/1.1\r\nHost: evil.com\r\nHost: a.com\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",           // no Host
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", // HTTP/2 with prior knowledge
	} {
		if s, err := sniff(bufio.NewReaderSize(strings.NewReader(in), guestReaderSize)); err == nil {
			t.Errorf("%.20q...: name %q, want an error", in, s.name)
		}
	}
	if _, _, err := readClientHello(bufio.NewReader(bytes.NewReader(clientHello(t, "")))); err == nil {
		t.Error("a ClientHello without a server name was accepted")
	}
	// Silence ends at the timeout.
	guest, host := net.Pipe()
	defer func() { _ = guest.Close() }()
	start := time.Now()
	if _, err := sniffName(host, bufio.NewReader(host), 200*time.Millisecond); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("silent connection: %v after %v", err, time.Since(start))
	}
}

func mustRules(t testing.TB, allow ...string) *Rules {
	t.Helper()
	r, err := Compile(Policy{DenyOut: []string{"0.0.0.0/0"}, AllowOut: allow})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// allowHosts is an admit function allowing names by the rules allow.
func allowHosts(t testing.TB, allow ...string) func([]string) error {
	r := mustRules(t, allow...)
	return func(hosts []string) error {
		for _, h := range hosts {
			if !r.NameAllowed(h) {
				return refuse("asks for %q", h)
			}
		}
		return nil
	}
}

// relayAll runs the request side of the HTTP guard over in and returns what it sent on.
func relayAll(t testing.TB, in string, tunnelled bool) (string, error) {
	t.Helper()
	r := bufio.NewReaderSize(strings.NewReader(in), guestReaderSize)
	s, err := sniff(r)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	err = relayRequests(&out, r, s.req, allowHosts(t, "allowed.test", "*.wild.test"), func(*reqHead) bool { return true }, func() bool { return tunnelled })
	return out.String(), err
}

// TestEveryRequestIsChecked: on a keep-alive connection admitted by a name rule, each request's
// host is checked; the first one naming a host the policy refuses ends the connection before
// any of it is sent on.
func TestEveryRequestIsChecked(t *testing.T) {
	ok1 := "GET /a HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 0\r\n\r\n"
	ok2 := "GET http://allowed.test/c HTTP/1.1\r\nHost: api.wild.test\r\n\r\n"
	ok3 := "POST /b HTTP/1.1\r\nHost: api.wild.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nTrailer: t\r\n\r\n"
	out, err := relayAll(t, ok1+ok2+ok3, false)
	if !errors.Is(err, errBodySent) || out != ok1+ok2+ok3 {
		t.Fatalf("allowed requests: %v, sent on %q", err, out)
	}
	bad := "GET /secret HTTP/1.1\r\nHost: evil.test\r\n\r\n"
	out, err = relayAll(t, ok1+bad+ok3, false)
	var ref refusal
	if !errors.As(err, &ref) || !strings.Contains(err.Error(), "evil.test") || out != ok1 {
		t.Fatalf("second request to a denied host: %v, sent on %q", err, out)
	}
	// The denied host hidden in a body is sent on as the body; nothing after it is.
	post := "POST /a HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 5\r\n\r\n"
	out, err = relayAll(t, post+"GET /"+bad, false)
	if !errors.Is(err, errBodySent) || out != post+"GET /" {
		t.Fatalf("body then a denied request: %v, sent on %q", err, out)
	}
}

// TestRequestsFramedAsServersMight: heads a server could frame or route differently from the
// guard are refused.
func TestRequestsFramedAsServersMight(t *testing.T) {
	first := "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
	for _, bad := range []string{
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"POST / HTTP/1.0\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer_Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: +3\r\n\r\n",
		"GET / HTTP/1.1\nHost: allowed.test\n\n",
		"GET / HTTP/1.1\r\nHost: allowed.test\r\nX: a\r b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test\r\nX: a\r\n folded\r\n\r\n",
		"GET http://evil.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"CONNECT evil.test:443 HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
	} {
		out, err := relayAll(t, first+bad+first, false)
		var ref refusal
		if !errors.As(err, &ref) || len(out) > len(first)+len(bad) || strings.Count(out, first) != 1 {
			t.Errorf("%q: %v, sent on %q", bad, err, out)
		}
	}
	// An upgrade or CONNECT only as a connection's first request.
	ws := "GET /ws HTTP/1.1\r\nHost: allowed.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
	if _, err := relayAll(t, first+ws, false); err == nil {
		t.Error("a WebSocket upgrade after the first request was let through")
	}
}

// TestUpgradeTunnel: after a WebSocket upgrade the server accepted, what follows is relayed as
// it is; after one it refused, requests are checked again.
func TestUpgradeTunnel(t *testing.T) {
	ws := "GET /ws HTTP/1.1\r\nHost: allowed.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
	frames := "\x81\x85\x01\x02\x03\x04GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"
	if out, err := relayAll(t, ws+frames, true); err != nil || out != ws+frames {
		t.Fatalf("accepted upgrade: %v, sent on %q", err, out)
	}
	bad := "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"
	if out, err := relayAll(t, ws+bad, false); err == nil || out != ws {
		t.Fatalf("refused upgrade then a denied request: %v, sent on %q", err, out)
	}
	// The response side tells which it was.
	for _, c := range []struct {
		resp string
		want bool
	}{
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes", true},
		{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n", true},
		{"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"garbage\r\n\r\n", false},
	} {
		tunnel := make(chan bool, 1)
		var out bytes.Buffer
		err := relayResponses(&out, strings.NewReader(c.resp), sentRequests(t, ws), tunnel)
		// A response the guard cannot read ends the connection: nothing of it is relayed.
		want := c.resp
		var ref refusal
		if errors.As(err, &ref) {
			want = ""
		}
		if got := <-tunnel; got != c.want || out.String() != want || want == "" && c.want {
			t.Errorf("%q: tunnel %v, relayed %q (%v)", c.resp, got, out.String(), err)
		}
	}
}

// serverHello is a TLS record with a ServerHello whose random is random.
func serverHello(random [32]byte) []byte {
	body := append([]byte{3, 3}, random[:]...)
	body = append(body, 0, 0x13, 0x01, 0) // empty session id, a suite, no compression
	msg := append([]byte{2, 0, 0, byte(len(body))}, body...)
	return append([]byte{0x16, 3, 3, 0, byte(len(msg))}, msg...)
}

// TestSecondClientHello: a ClientHello sent again in clear after a HelloRetryRequest must name an
// allowed host too (it could name another than the first).
func TestSecondClientHello(t *testing.T) {
	admit := allowHosts(t, "allowed.test")
	ccs := []byte{0x14, 3, 3, 0, 1, 1}
	for _, c := range []struct {
		name   string
		server []byte
		client []byte
		ok     bool
	}{
		{"retry, then an allowed name", serverHello(helloRetryRandom), append(ccs, clientHello(t, "allowed.test")...), true},
		{"retry, then another name", serverHello(helloRetryRandom), append(ccs, clientHello(t, "evil.test")...), false},
		{"retry, then Encrypted Client Hello", serverHello(helloRetryRandom), append(ccs, withExtension(t, clientHello(t, "allowed.test"), 0xfe0d, greaseECH())...), false},
		{"no retry: what follows is not parsed", serverHello([32]byte{1}), []byte("\x16\x03\x03\x00\x05\x01\xff\xff\xff\xff"), true},
	} {
		var state atomic.Int32
		pr, pw := io.Pipe()
		served := make(chan error, 1)
		go func() { served <- relayTLSServer(io.Discard, pr, &state) }()
		go func() { _, _ = pw.Write(c.server) }()
		for deadline := time.Now().Add(5 * time.Second); state.Load() == tlsHello; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the server side did not see the ServerHello", c.name)
			}
		}
		var toServer bytes.Buffer
		err := relayTLSClient(&toServer, bufio.NewReader(bytes.NewReader(c.client)), &state, admit, false)
		_ = pw.Close()
		<-served
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
		if c.ok && !bytes.Equal(toServer.Bytes(), c.client) {
			t.Errorf("%s: relayed %d of %d bytes", c.name, toServer.Len(), len(c.client))
		}
	}
}

// TestTLSThroughTheGuard: real TLS 1.3 handshakes, one with a HelloRetryRequest (the server
// wants a group the client sent no key share for), pass through the guard unchanged.
func TestTLSThroughTheGuard(t *testing.T) {
	cert := selfSigned(t, "allowed.test")
	for _, tc := range []struct {
		curves []tls.CurveID
		max    uint16
	}{{nil, 0}, {[]tls.CurveID{tls.CurveP384}, 0}, {nil, tls.VersionTLS12}} {
		curves, maxVersion := tc.curves, tc.max
		server, sOut := net.Pipe()
		guest, cIn := net.Pipe()
		go func() {
			c := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: curves, MaxVersion: maxVersion})
			if c.Handshake() == nil {
				_, _ = c.Write([]byte("hello from allowed.test"))
			}
			_ = c.Close()
		}()
		relayed := make(chan error, 1)
		go func() {
			r := bufio.NewReaderSize(cIn, guestReaderSize)
			s, err := sniff(r)
			if err != nil {
				relayed <- err
				return
			}
			relayed <- relayTLS(cIn, r, sOut, s, allowHosts(t, "allowed.test"))
		}()
		pool := x509.NewCertPool()
		pool.AddCert(cert.Leaf)
		c := tls.Client(guest, &tls.Config{ServerName: "allowed.test", RootCAs: pool, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP384}})
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		msg, err := io.ReadAll(c)
		if err != nil || string(msg) != "hello from allowed.test" {
			t.Fatalf("curves %v: %q, %v", curves, msg, err)
		}
		if v := c.ConnectionState().Version; maxVersion != 0 && v != maxVersion {
			t.Fatalf("TLS version %#x, want %#x", v, maxVersion)
		}
		if retried := c.ConnectionState().HelloRetryRequest; retried != (curves != nil) {
			t.Fatalf("curves %v: HelloRetryRequest %v", curves, retried)
		}
		_ = c.Close()
		// (net.Pipe has no half-close: the guard's ends may see a closed pipe.)
		var ref refusal
		if err := <-relayed; errors.As(err, &ref) {
			t.Fatalf("curves %v: guard: %v", curves, err)
		}
	}
}

func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// frame is one frame in QEMU's stream framing: a length, then an Ethernet header from src to
// dst and size-14 bytes (or size bytes of nothing, for a runt).
func frame(dst, src string, size int) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(size))
	body := make([]byte, size)
	if size >= 14 {
		copy(body[0:6], mustMAC(dst))
		copy(body[6:12], mustMAC(src))
		binary.BigEndian.PutUint16(body[12:14], 0x0800)
	}
	return append(b, body...)
}

func TestFrameGuard(t *testing.T) {
	const bcast = "ff:ff:ff:ff:ff:ff"
	ok := bytes.Join([][]byte{frame(GatewayMAC, GuestMAC, 100), frame(bcast, GuestMAC, 60), frame(GatewayMAC, GuestMAC, maxFrame)}, nil)
	runts := append(frame(GatewayMAC, GuestMAC, 0), frame(GatewayMAC, GuestMAC, 13)...)
	foreign := bytes.Join([][]byte{
		frame(GatewayMAC, "02:00:00:00:00:01", 60),                              // from another source
		frame(GuestMAC, GuestMAC, 60), frame("02:00:00:00:00:02", GuestMAC, 60), // to another destination
	}, nil)
	a, b := net.Pipe()
	go func() { _, _ = a.Write(bytes.Join([][]byte{runts, ok, foreign}, nil)); _ = a.Close() }()
	g := newFrameGuard(b, 0, nil)
	var got bytes.Buffer
	if _, err := io.Copy(&got, g); err != nil || !bytes.Equal(got.Bytes(), ok) || g.dropped != 5 {
		t.Fatalf("valid frames among dropped ones: %v, %d of %d bytes, %d dropped", err, got.Len(), len(ok), g.dropped)
	}
	a, b = net.Pipe()
	go func() {
		_, _ = a.Write(append(frame(GatewayMAC, GuestMAC, 60), frame(GatewayMAC, GuestMAC, maxFrame+1)[:4]...))
		_ = a.Close()
	}()
	if _, err := io.Copy(io.Discard, newFrameGuard(b, 0, nil)); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized frame: %v", err)
	}
}

// TestRequestTargets: a request's target is origin-form ("/path", not "//"), absolute-form
// (http, https, ws or wss, without userinfo, its host allowed too), "*" for OPTIONS only or
// authority-form for CONNECT only; the version HTTP/1.0 or HTTP/1.1. Anything else a server
// might read as naming another host, or read otherwise than the guard, is refused.
func TestRequestTargets(t *testing.T) {
	for _, ok := range []string{
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET /a/b?c=d//e HTTP/1.0\r\nHost: allowed.test\r\n\r\n",
		"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET HTTPS://allowed.test:8443 HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET ws://api.wild.test/x HTTP/1.1\r\nHost: allowed.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET wss://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n",
	} {
		if out, err := relayAll(t, ok, true); err != nil || out != ok {
			t.Errorf("%q: %v, sent on %q", ok, err, out)
		}
	}
	for _, bad := range []string{
		"GET evil.test:80 HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET //evil.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http://evil.test:80@allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http://user@allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http:///x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http:/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET ftp://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET * HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"OPTIONS *x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET allowed.test:80 HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"CONNECT /x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"CONNECT allowed.test HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"CONNECT http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET /\x7fx HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET / HTTP/1.2\r\nHost: allowed.test\r\n\r\n",
		"GET / HTTP/1.10\r\nHost: allowed.test\r\n\r\n",
		"GET / http/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET  / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET / HTTP/1.1 \r\nHost: allowed.test\r\n\r\n",
	} {
		out, err := relayAll(t, bad, true)
		var ref refusal
		if !errors.As(err, &ref) || out != "" {
			t.Errorf("%q: %v, sent on %q", bad, err, out)
		}
	}
}

// TestBodiesServersMayIgnore: a body a server may ignore, and so read as the next request, is
// refused: one on a GET, HEAD, OPTIONS, DELETE, TRACE or CONNECT, and any request with Expect
// (a server answering it with a final status without reading the body).
func TestBodiesServersMayIgnore(t *testing.T) {
	smuggled := "GET /secret HTTP/1.1\r\nHost: evil.test\r\n\r\n"
	cl := fmt.Sprintf("Content-Length: %d\r\n\r\n", len(smuggled)) + smuggled
	chunked := fmt.Sprintf("Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "get"} {
		for _, body := range []string{cl, chunked} {
			bad := m + " / HTTP/1.1\r\nHost: allowed.test\r\n" + body
			out, err := relayAll(t, bad, false)
			var ref refusal
			if !errors.As(err, &ref) || out != "" {
				t.Errorf("%q: %v, sent on %q", bad, err, out)
			}
		}
		// Without a body, or an empty one, they pass (in upper case).
		ok := m + " / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 0\r\n\r\n"
		if out, err := relayAll(t, ok, false); m != "get" && (err != nil || out != ok) {
			t.Errorf("%q: %v, sent on %q", ok, err, out)
		}
	}
	for _, bad := range []string{
		"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test\r\n" + cl,
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nExpect: 100-continue\r\n" + cl,
		"PUT / HTTP/1.1\r\nHost: allowed.test\r\nexpect: 100-continue\r\n" + chunked,
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
	} {
		out, err := relayAll(t, bad, false)
		var ref refusal
		if !errors.As(err, &ref) || out != "" {
			t.Errorf("%q: %v, sent on %q", bad, err, out)
		}
	}
}

// TestBodyEndsTheConnection: after a request with a body, no other request is sent on, and
// the response side stops at the end of its response: if the server ignored the body and read
// it as a request for another host, its answer never reaches the guest.
func TestBodyEndsTheConnection(t *testing.T) {
	get := "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
	post := "POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 5\r\n\r\nhello"
	out, err := relayAll(t, get+post+get, false)
	if !errors.Is(err, errBodySent) || out != get+post {
		t.Fatalf("a request after one with a body: %v, sent on %q", err, out)
	}
	// The responses to what was sent, then what a server that ignored the body answers to it.
	resp := []string{
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n",
	}
	evil := "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nfrom evil.test"
	for _, second := range resp {
		for _, first := range resp {
			var got bytes.Buffer
			err := relayResponses(&got, strings.NewReader(first+second+evil), sentRequests(t, get+post), make(chan bool, 1))
			if !errors.Is(err, errAnswered) || got.String() != first+second {
				t.Errorf("%q then %q: %v, relayed %q", first, second, err, got.String())
			}
		}
	}
}

// sentRequests is what the request side of the HTTP guard sent the server for in.
func sentRequests(t *testing.T, in string) <-chan *reqHead {
	t.Helper()
	sent := make(chan *reqHead, 16)
	r := bufio.NewReaderSize(strings.NewReader(in), guestReaderSize)
	s, err := sniff(r)
	if err != nil {
		t.Fatal(err)
	}
	err = relayRequests(io.Discard, r, s.req, allowHosts(t, "allowed.test"), func(rq *reqHead) bool { sent <- rq; return true }, func() bool { return false })
	if err != nil && !errors.Is(err, errBodySent) {
		t.Fatal(err)
	}
	close(sent)
	return sent
}

// TestResponseFraming: the response side reads each response by its framing, as a client
// would (no body after HEAD, 204 or 304; chunked; Content-Length; to the end), relaying them
// unchanged; one it cannot frame ends the connection.
func TestResponseFraming(t *testing.T) {
	get := "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
	head := "HEAD / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
	post := "POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1\r\n\r\nx"
	for _, c := range []struct {
		reqs, resps, rest string
		ok                bool
	}{
		{get + head + get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab" +
			"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" +
			"HTTP/1.1 204 No Content\r\n\r\n", "", true},
		{get + post, "HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n" +
			"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1\r\na\r\n0\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n", true},
		{post, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", "rest", true},
		{get + get, "HTTP/1.0 200 OK\r\n\r\nto the end, HTTP/1.1 200 OK\r\n\r\n", "", true},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "", false},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nab", "", false},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab", "", false},
		{get, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "", false},
		{get, "SSH-2.0-x\r\n\r\n", "", false},
		{get, "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxResponseHead) + "\r\n\r\n", "", false},
		{post, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n", "", false},
	} {
		var got bytes.Buffer
		err := relayResponses(&got, strings.NewReader(c.resps+c.rest), sentRequests(t, c.reqs), make(chan bool, 1))
		var ref refusal
		switch {
		case c.ok && (err != nil && !errors.Is(err, errAnswered) || got.String() != c.resps):
			t.Errorf("%q: %v, relayed %q", c.resps, err, got.String())
		case !c.ok && !errors.As(err, &ref):
			t.Errorf("%q: %v, want a refusal", c.resps, err)
		}
	}
}

// record is one TLS record of type typ carrying body.
func record(typ byte, body ...byte) []byte {
	return append([]byte{typ, 3, 3, byte(len(body) >> 8), byte(len(body))}, body...)
}

// TestTLSRelayFailsClosed: until the server's ServerHello, what either side sends must be the
// TLS the guard reads, else the connection ends: from the guest, handshake records (a
// ClientHello), a change_cipher_spec, alerts, and application data only as the early data its
// ClientHello offered; from the server, a ServerHello first, a change_cipher_spec or alerts.
// Before, a server that did not answer in TLS (a plain HTTP server on a front end's port)
// turned the relay into a raw pipe, and the guest's records were sent on unparsed.
func TestTLSRelayFailsClosed(t *testing.T) {
	admit := allowHosts(t, "allowed.test")
	alert := record(0x15, 1, 0)
	ccs := record(0x14, 1)
	appData := record(0x17, 1, 2, 3, 4)
	for _, c := range []struct {
		name   string
		client []byte
		early  bool
		ok     bool
	}{
		{"a change_cipher_spec and an alert", append(append([]byte(nil), ccs...), alert...), false, true},
		{"early data offered", appData, true, true},
		{"application data not offered as early data", appData, false, false},
		// (Read as a record, "GET /" says 8239 bytes follow.)
		{"HTTP after the ClientHello", []byte("GET / HTTP/1.1\r\nHost: evil.test\r\nX: " + strings.Repeat("x", 8239) + "\r\n\r\n"), true, false},
		{"a record of another type", record(0x18, 1, 0, 0), true, false},
		{"a handshake message but a ClientHello", record(0x16, 11, 0, 0, 0), true, false},
		{"an oversized record", []byte{0x17, 3, 3, 0xff, 0xff}, true, false},
	} {
		var state atomic.Int32
		var out bytes.Buffer
		err := relayTLSClient(&out, bufio.NewReader(bytes.NewReader(c.client)), &state, admit, c.early)
		var ref refusal
		if c.ok && (err != nil || !bytes.Equal(out.Bytes(), c.client)) || !c.ok && (!errors.As(err, &ref) || out.Len() > 0) {
			t.Errorf("guest: %s: %v, sent on %.60q", c.name, err, out.Bytes())
		}
	}
	for _, c := range []struct {
		name   string
		server []byte
		ok     bool
	}{
		{"an alert", alert, true},
		{"a ServerHello, then anything", append(serverHello([32]byte{1}), "anything"...), true},
		{"HTTP", []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), false},
		{"application data", appData, false},
		{"a handshake message but a ServerHello", record(0x16, 11, 0, 0, 0), false},
		{"an oversized record", []byte{0x16, 3, 3, 0xff, 0xff}, false},
	} {
		var state atomic.Int32
		var out bytes.Buffer
		err := relayTLSServer(&out, bytes.NewReader(c.server), &state)
		var ref refusal
		if c.ok && (errors.As(err, &ref) || !bytes.Equal(out.Bytes(), c.server)) || !c.ok && (!errors.As(err, &ref) || out.Len() > 0) {
			t.Errorf("server: %s: %v, relayed %q", c.name, err, out.Bytes())
		}
	}
}

// TestServerEndBetweenResponses: when the server ends its side after a response (HTTP/1.0, or
// Connection: close), the guest sees the end at once, without sending another request.
func TestServerEndBetweenResponses(t *testing.T) {
	sent := make(chan *reqHead, 1)
	s, err := sniff(bufio.NewReader(strings.NewReader("GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	sent <- s.req // and no more, but the guest's side has not ended
	resp := "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
	done := make(chan error, 1)
	var got bytes.Buffer
	go func() { done <- relayResponses(&got, strings.NewReader(resp), sent, make(chan bool, 1)) }()
	select {
	case err := <-done:
		if err != nil || got.String() != resp {
			t.Fatalf("%v, relayed %q", err, got.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's end was not passed on while no request was pending")
	}
}
