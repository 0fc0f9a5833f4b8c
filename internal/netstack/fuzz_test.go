package netstack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzFrames turns a fuzz input into what a VM writes on its link. in[0] picks the form: bit 0
// clear, the rest is the stream as it is (any length prefixes); set, the rest is frames, each a
// 2-byte length and its bytes, framed here; with bit 1 set too, each frame at least an Ethernet
// header long goes from the guest to the gateway (so that it reaches the stack behind the
// switch).
func fuzzFrames(in []byte) []byte {
	if len(in) == 0 || in[0]&1 == 0 {
		if len(in) == 0 {
			return nil
		}
		return in[1:]
	}
	mode, rest := in[0], in[1:]
	var out []byte
	for len(rest) >= 2 {
		k := min(int(binary.BigEndian.Uint16(rest)), len(rest)-2)
		f := append([]byte(nil), rest[2:2+k]...)
		rest = rest[2+k:]
		if mode&2 != 0 && len(f) >= 14 {
			copy(f[0:6], mustMAC(GatewayMAC))
			copy(f[6:12], mustMAC(GuestMAC))
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}

// checkGuarded reads what the guard lets through from stream and checks that it is whole frames,
// each at least an Ethernet header long and at most maxFrame, from the guest to the gateway or
// the broadcast address, in the order they came.
func checkGuarded(t *testing.T, stream []byte) {
	a, b := net.Pipe()
	go func() { _, _ = a.Write(stream); _ = a.Close() }()
	g := newFrameGuard(b, 0, nil)
	var out bytes.Buffer
	_, err := io.Copy(&out, g)
	_ = b.Close()
	if err != nil && err != io.ErrUnexpectedEOF && !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("guard: %v", err)
	}
	got := out.Bytes()
	var want []byte // the valid frames of stream, as far as the guard read
	for rest := stream; len(rest) >= 4; {
		size := int(binary.BigEndian.Uint32(rest))
		if size > maxFrame || len(rest) < 4+size {
			break
		}
		f := rest[4 : 4+size]
		rest = rest[4+size:]
		if size >= 14 && bytes.Equal(f[6:12], mustMAC(GuestMAC)) &&
			(bytes.Equal(f[0:6], mustMAC(GatewayMAC)) || bytes.Equal(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})) {
			want = binary.BigEndian.AppendUint32(want, uint32(size))
			want = append(want, f...)
		}
	}
	// A truncated last frame may be passed on in part: the switch then sees the stream end.
	if !bytes.HasPrefix(got, want) || len(got)-len(want) > 4+maxFrame {
		t.Fatalf("guard passed %d bytes, want the %d bytes of valid frames", len(got), len(want))
	}
	for rest := got; len(rest) >= 4+14; {
		size := int(binary.BigEndian.Uint32(rest))
		if size < 14 || size > maxFrame {
			t.Fatalf("guard passed a frame of %d bytes", size)
		}
		rest = rest[min(len(rest), 4+size):]
	}
}

// FuzzFrameGuard: whatever a VM writes on its link goes through the frame guard into a real
// switch and stack without a panic or a stall, passing the switch only well-formed frames
// (which bounds what it learns), and the link ends cleanly, leaving nothing open.
func FuzzFrameGuard(f *testing.F) {
	f.Add(append([]byte{0}, announceFrame()...))
	f.Add(append([]byte{0}, frame(GatewayMAC, GuestMAC, 60)...))
	f.Add([]byte{0, 0, 0, 0, 0})                       // a frame of nothing
	f.Add([]byte{0, 0, 0, 0, 13, 1, 2, 3})             // a runt
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff, 1})        // a length the switch would allocate
	f.Add([]byte{3, 0, 0, 0, 14, 0, 1, 2, 3, 4, 5, 6}) // framed here, short
	// An ARP request, a TCP SYN to 1.2.3.4:80 and a DNS query to the gateway, from the guest.
	f.Add(append([]byte{3}, fuzzPackets()...))
	f.Add(bytes.Repeat([]byte{0, 0, 0, 0}, 64))
	n := newTestNetwork(f, Policy{})
	var dialled atomic.Int32
	n.dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		dialled.Add(1)
		return nil, errors.New("nothing is dialled in this test")
	}
	f.Cleanup(func() { _ = n.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		defer func() {
			if dialled.Load() != 0 {
				t.Fatal("the network dialled out with the internet off")
			}
		}()
		stream := fuzzFrames(in)
		checkGuarded(t, stream)
		vm, host := socketPair(t)
		defer func() { _ = vm.Close() }()
		ended := make(chan struct{})
		go func() { // the VM takes every frame until the switch ends the link
			defer close(ended)
			_, _ = io.Copy(io.Discard, vm)
		}()
		if err := n.Attach(host); err != nil {
			t.Fatal(err)
		}
		go func() {
			_, _ = vm.Write(stream)
			_ = vm.(*net.UnixConn).CloseWrite()
		}()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatal("the link did not end after the VM's stream did")
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			n.mu.Lock()
			open := len(n.conns) + len(n.flowSet)
			n.mu.Unlock()
			if open == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d connections left open", open)
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// fuzzPackets are frames (in fuzzFrames' 2-byte framing) a guest sends first: an ARP request
// for the gateway, a TCP SYN to 1.2.3.4:80, a DNS query to the gateway.
func fuzzPackets() []byte {
	eth := func(typ uint16, payload []byte) []byte {
		b := append(append(mustMAC(GatewayMAC), mustMAC(GuestMAC)...), byte(typ>>8), byte(typ))
		return append(b, payload...)
	}
	ipv4 := func(proto byte, dst [4]byte, payload []byte) []byte {
		h := []byte{0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0}
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
		src := GuestIP.As4()
		h = append(append(h, src[:]...), dst[:]...)
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(h[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
		return append(h, payload...)
	}
	gip, gw := GuestIP.As4(), GatewayIP.As4()
	arpReq := append([]byte{0, 1, 8, 0, 6, 4, 0, 1}, mustMAC(GuestMAC)...)
	arpReq = append(append(append(arpReq, gip[:]...), make([]byte, 6)...), gw[:]...)
	syn := []byte{0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}
	q, _ := query("api.example.com").Pack()
	dnsq := append([]byte{0x9c, 0x41, 0, 53, 0, byte(8 + len(q)), 0, 0}, q...)
	var out []byte
	for _, f := range [][]byte{eth(0x0806, arpReq), eth(0x0800, ipv4(6, [4]byte{1, 2, 3, 4}, syn)), eth(0x0800, ipv4(17, gw, dnsq))} {
		out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
		out = append(out, f...)
	}
	return out
}

// countingReader counts what is read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += k
	return k, err
}

// FuzzSniff: whatever a connection's first bytes are, sniffing reads a bounded amount and
// returns a name only if it is a well-formed host name, with the bytes to send on first.
func FuzzSniff(f *testing.F) {
	f.Add(clientHello(f, "api.example.com"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: API.example.com:8080\r\nContent-Length: 4\r\n\r\nbody"))
	f.Add([]byte("GET http://evil.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"))
	f.Add([]byte("\x16\x03\x01\x00\x04\x01\x00\x00\x00"))
	f.Add([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		cr := &countingReader{r: bytes.NewReader(in)}
		s, err := sniff(bufio.NewReaderSize(cr, guestReaderSize))
		// One head or ClientHello, plus what the buffer and a last record read ahead.
		if cr.n > maxSniff+guestReaderSize+5+1<<14 {
			t.Fatalf("read %d bytes", cr.n)
		}
		if err != nil {
			return
		}
		if !validHostName(s.name) || s.name != strings.ToLower(s.name) || strings.ContainsAny(s.name, ":[]@/ ") {
			t.Fatalf("name %q", s.name)
		}
		head := s.head
		if !s.tls {
			head = s.req.raw
		}
		if !bytes.HasPrefix(in, head) || len(head) == 0 {
			t.Fatalf("head of %d bytes is not the input's start", len(head))
		}
	})
}

// FuzzHostCheck: whatever a guest sends on a plain HTTP connection admitted by a name rule, the
// guard sends on a prefix of it in which every request a server could read (net/http's
// reading is the oracle) names an allowed host.
func FuzzHostCheck(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"POST /b HTTP/1.1\r\nHost: api.wild.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: t\r\n\r\nGET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: allowed.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 41\r\n\r\nGET /secret HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nExpect: 100-continue\r\nContent-Length: 41\r\n\r\nGET /secret HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"GET http://evil.test:80@allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: allowed.test\r\n\r\nCONNECT allowed.test:443 HTTP/1.0\r\nHost: allowed.test\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, tunnelled bool) {
		r := bufio.NewReaderSize(bytes.NewReader(in), guestReaderSize)
		s, err := sniff(r)
		if err != nil || s.tls {
			return
		}
		var out bytes.Buffer
		_ = relayRequests(&out, r, s.req, allowHosts(t, "allowed.test", "*.wild.test"), func(*reqHead) bool { return true }, func() bool { return tunnelled })
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatal("sent on what the guest did not send")
		}
		br := bufio.NewReader(bytes.NewReader(out.Bytes()))
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			for _, h := range []string{req.Host, req.URL.Host} {
				if host, _, ok := strings.Cut(h, ":"); ok {
					h = host
				}
				if h != "" && !mustRules(t, "allowed.test", "*.wild.test").NameAllowed(h) {
					t.Fatalf("a request for %q was sent on", h)
				}
			}
			if req.Header.Get("Expect") != "" || req.URL.User != nil {
				t.Fatalf("a request with Expect or userinfo was sent on: %q", req.RequestURI)
			}
			k, err := io.Copy(io.Discard, req.Body)
			if err != nil {
				return
			}
			if k > 0 || len(req.TransferEncoding) > 0 {
				switch req.Method {
				case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete, http.MethodTrace, http.MethodConnect:
					t.Fatalf("a %s request with a body was sent on", req.Method)
				}
				if _, err := br.Peek(1); err != io.EOF {
					t.Fatal("a request was sent on after one with a body")
				}
			}
			if req.Header.Get("Upgrade") != "" || req.Method == http.MethodConnect {
				return // what follows an upgrade the server accepted is not HTTP
			}
		}
	})
}

// FuzzResponses: whatever a server answers a GET, a HEAD, a GET and a POST with a body sent
// on a name-admitted connection, the guard relays to the guest a prefix of it, and when it
// ends the connection after the POST's answer (errAnswered) what it relayed is exactly four
// responses (and interim ones) as net/http's client reads them: nothing the server sent after
// them (which could answer requests it read out of the POST's body) reaches the guest.
func FuzzResponses(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" +
			"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n" +
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\r\na\r\n0\r\nT: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
		"HTTP/1.1 304 Not Modified\nContent-Length: 5\n\nHTTP/1.1 200 OK\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\nto the end",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	get := "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
	reqs := get + "HEAD / HTTP/1.1\r\nHost: allowed.test\r\n\r\n" + get + "POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1\r\n\r\nx"
	methods := []string{http.MethodGet, http.MethodHead, http.MethodGet, http.MethodPost}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		err := relayResponses(&out, bytes.NewReader(in), sentRequests(t, reqs), make(chan bool, 1))
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatal("relayed what the server did not send")
		}
		if !errors.Is(err, errAnswered) {
			return
		}
		br := bufio.NewReader(bytes.NewReader(out.Bytes()))
		for _, m := range methods {
			for {
				resp, err := http.ReadResponse(br, &http.Request{Method: m})
				if err != nil {
					t.Fatalf("net/http cannot read the answer to a %s: %v", m, err)
				}
				if _, err := io.Copy(io.Discard, resp.Body); err != nil {
					t.Fatalf("net/http cannot read the body of the answer to a %s: %v", m, err)
				}
				if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == 101 {
					break
				}
			}
		}
		if rest, _ := io.ReadAll(br); len(rest) > 0 {
			t.Fatalf("relayed %q after the answer to the POST", rest)
		}
	})
}

// wireLabels decodes name (presentation form) into its labels as they go on the wire.
func wireLabels(name string) ([]string, bool) {
	buf := make([]byte, 256)
	k, err := dns.PackDomainName(dns.Fqdn(name), buf, 0, nil, false)
	if err != nil {
		return nil, false
	}
	var labels []string
	for i := 0; i < k && buf[i] != 0; i += 1 + int(buf[i]) {
		labels = append(labels, strings.ToLower(string(buf[i+1:i+1+int(buf[i])])))
	}
	return labels, true
}

// FuzzDNS: whatever query a guest sends, the DNS server answers without a panic, within the
// size the guest takes, and never answers a name the policy refuses (internet off, allowOut
// *.example.com, pinned.test and a CIDR).
func FuzzDNS(f *testing.F) {
	for _, name := range []string{"api.example.com", "pinned.test", "leak.attacker.net", `a\.example.com`, "example.com", `x.example.com\000`} {
		q, _ := query(name).Pack()
		f.Add(q)
	}
	big := query("api.example.com")
	big.SetEdns0(65535, true)
	q, _ := big.Pack()
	f.Add(q)
	n := newTestNetwork(f, Policy{AllowOut: []string{"*.example.com", "pinned.test", "1.2.3.0/24"}})
	f.Cleanup(func() { _ = n.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(in); err != nil || len(in) < 12 {
			return // the server answers FORMERR itself
		}
		// What the server takes to its handler (the rest it refuses or ignores itself).
		u16 := func(i int) uint16 { return binary.BigEndian.Uint16(in[i:]) }
		h := dns.Header{Id: u16(0), Bits: u16(2), Qdcount: u16(4), Ancount: u16(6), Nscount: u16(8), Arcount: u16(10)}
		if dns.DefaultMsgAcceptFunc(h) != dns.MsgAccept {
			return
		}
		resp := n.answer(req)
		resp.Truncate(udpAnswerSize(req))
		packed, err := resp.Pack()
		if err == nil && len(packed) > udpAnswerSize(req) {
			t.Fatalf("an answer of %d bytes over UDP, the guest takes %d", len(packed), udpAnswerSize(req))
		}
		if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
			if len(resp.Answer) != 0 {
				t.Fatal("answered a query that is not one question")
			}
			return
		}
		labels, ok := wireLabels(req.Question[0].Name)
		allowed := ok && len(labels) > 0
		for _, l := range labels {
			allowed = allowed && l != "" && strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-_") == ""
		}
		k := len(labels)
		allowed = allowed && (k == 2 && labels[0] == "pinned" && labels[1] == "test" || k >= 3 && labels[k-2] == "example" && labels[k-1] == "com")
		if !allowed && (resp.Rcode != dns.RcodeRefused || len(resp.Answer)+len(resp.Ns)+len(resp.Extra) != 0) {
			t.Fatalf("%q (labels %q) is refused by the policy, answered rcode %d with %d records", req.Question[0].Name, labels, resp.Rcode, len(resp.Answer))
		}
	})
}
