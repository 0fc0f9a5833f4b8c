package netstack

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// echConfigList is an ECHConfigList (RFC 9849, version 0xfe0d) with one config for an X25519
// key, HKDF-SHA256 and AES-128-GCM, whose public name (the outer ClientHello's SNI) is
// publicName.
func echConfigList(pub []byte, publicName string) (config, list []byte) {
	var c []byte
	c = append(c, 7)                             // config_id
	c = binary.BigEndian.AppendUint16(c, 0x0020) // X25519
	c = binary.BigEndian.AppendUint16(c, uint16(len(pub)))
	c = append(c, pub...)
	c = binary.BigEndian.AppendUint16(c, 4)
	c = binary.BigEndian.AppendUint16(c, 0x0001) // HKDF-SHA256
	c = binary.BigEndian.AppendUint16(c, 0x0001) // AES-128-GCM
	c = append(c, 0)                             // maximum_name_length
	c = append(c, byte(len(publicName)))
	c = append(c, publicName...)
	c = binary.BigEndian.AppendUint16(c, 0) // no extensions
	config = binary.BigEndian.AppendUint16(nil, 0xfe0d)
	config = binary.BigEndian.AppendUint16(config, uint16(len(c)))
	config = append(config, c...)
	list = binary.BigEndian.AppendUint16(nil, uint16(len(config)))
	return config, append(list, config...)
}

// withExtension returns the records of a ClientHello (one record, as crypto/tls sends it
// without a pre_shared_key) with the extension typ carrying data added at its end.
func withExtension(t testing.TB, records []byte, typ uint16, data []byte) []byte {
	t.Helper()
	msg := records[5:]
	p := 4 + 2 + 32 // type and length, version, random
	p += 1 + int(msg[p])
	p += 2 + int(binary.BigEndian.Uint16(msg[p:]))
	p += 1 + int(msg[p])
	if len(msg) < p+2 || int(binary.BigEndian.Uint16(msg[p:])) != len(msg)-p-2 {
		t.Fatal("withExtension: not a ClientHello in one record")
	}
	out := append([]byte(nil), records...)
	out = binary.BigEndian.AppendUint16(out, typ)
	out = binary.BigEndian.AppendUint16(out, uint16(len(data)))
	out = append(out, data...)
	m := out[5:]
	binary.BigEndian.PutUint16(m[p:], uint16(len(m)-p-2))
	size := len(m) - 4
	m[1], m[2], m[3] = byte(size>>16), byte(size>>8), byte(size)
	binary.BigEndian.PutUint16(out[3:5], uint16(len(m)))
	return out
}

// greaseECH is the payload of an outer encrypted_client_hello extension as a browser sends
// it to GREASE ECH (RFC 9849 6.2): well formed, random.
func greaseECH() []byte {
	enc := make([]byte, 32)
	payload := make([]byte, 144)
	_, _ = rand.Read(enc)
	_, _ = rand.Read(payload)
	b := []byte{0}                               // outer
	b = binary.BigEndian.AppendUint16(b, 0x0001) // HKDF-SHA256
	b = binary.BigEndian.AppendUint16(b, 0x0001) // AES-128-GCM
	b = append(b, 0x42)                          // config_id
	b = binary.BigEndian.AppendUint16(b, uint16(len(enc)))
	b = append(b, enc...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	return append(b, payload...)
}

// TestEncryptedClientHelloRefused: a guest allowed only allowed.test sends a ClientHello
// whose outer server name is allowed.test and whose encrypted inner one is evil.test; a
// client-facing server holding the ECH key (a CDN) would route it to evil.test. Under a name
// rule the guard refuses every ClientHello that offers ECH (the draft codepoints and ESNI's
// too, and a browser's GREASE ECH, which cannot be told from the real thing), so the server
// never sees it.
func TestEncryptedClientHelloRefused(t *testing.T) {
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	config, list := echConfigList(key.PublicKey().Bytes(), "allowed.test")

	// A real ECH handshake through the guard: the server would see evil.test.
	srvSide, guardOut := net.Pipe()
	var inner atomic.Value
	go func() {
		s := tls.Server(srvSide, &tls.Config{
			Certificates:             []tls.Certificate{selfSigned(t, "evil.test")},
			EncryptedClientHelloKeys: []tls.EncryptedClientHelloKey{{Config: config, PrivateKey: key.Bytes()}},
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				inner.Store(h.ServerName)
				return nil, nil
			},
		})
		if s.Handshake() == nil {
			_, _ = s.Write([]byte("secret from evil.test"))
		}
		_ = s.Close()
	}()
	guestSide, guardIn := net.Pipe()
	got := make(chan string, 1)
	go func() {
		c := tls.Client(guestSide, &tls.Config{ServerName: "evil.test", InsecureSkipVerify: true,
			EncryptedClientHelloConfigList: list, MinVersion: tls.VersionTLS13})
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		got <- string(b)
		_ = c.Close()
	}()
	admit := allowHosts(t, "allowed.test")
	gr := bufio.NewReaderSize(guardIn, guestReaderSize)
	s, err := sniff(gr)
	if err == nil {
		err = admit([]string{s.name})
	}
	if err == nil {
		err = relayTLS(guardIn, gr, guardOut, s, admit)
	}
	_ = guardIn.Close()
	_ = guardOut.Close()
	var ref refusal
	if !errors.As(err, &ref) || !strings.Contains(err.Error(), "Encrypted Client Hello") {
		t.Errorf("a ClientHello with ECH (outer name %q): %v, want a refusal", s.name, err)
	}
	if msg := <-got; msg != "" || inner.Load() != nil {
		t.Fatalf("the server saw %v and the guest read %q", inner.Load(), msg)
	}

	// A GREASE ECH, the drafts' and ESNI's extensions, the same.
	hello := clientHello(t, "allowed.test")
	for _, c := range []struct {
		typ  uint16
		data []byte
	}{{0xfe0d, greaseECH()}, {0xfe0a, greaseECH()}, {0xffce, []byte{0x13, 0x01, 0, 0x1d, 0, 0}}} {
		_, err := sniff(bufio.NewReaderSize(bytes.NewReader(withExtension(t, hello, c.typ, c.data)), guestReaderSize))
		if !errors.As(err, &ref) {
			t.Errorf("a ClientHello with extension %#04x: %v, want a refusal", c.typ, err)
		}
	}
	// Without it, the hello passes.
	if s, err := sniff(bufio.NewReaderSize(bytes.NewReader(withExtension(t, hello, 0xfafa, nil)), guestReaderSize)); err != nil || s.name != "allowed.test" {
		t.Fatalf("a ClientHello with a GREASE extension: %q, %v", s.name, err)
	}
}
