package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testHosts is the project's own network of test servers: a network namespace joined to the
// host by a veth pair (10.200.0.1 on the host side; 10.200.0.2 and 10.200.0.3 inside), where
// listeners are opened by a thread that entered the namespace. Sandboxes reach them through
// Cell's network like any destination; test traffic never goes anywhere else.
//
// Servers, on both addresses: HTTP :80 and HTTPS :443 (a certificate from the test CA for
// allowed.test, other.test and *.wild.test) answering "host=<Host> sni=<SNI> local=<addr>",
// a TCP sink :9000 that answers the byte count when the sender half-closes, and a UDP echo :7.
type testHosts struct {
	ns     string
	caPEM  []byte
	hostIP string // the host's end of the veth (reserved for sandboxes: a host address)
	ips    []string
	lns    []io.Closer
}

const (
	testHostA = "10.200.0.2"
	testHostB = "10.200.0.3"
)

var (
	hostsOnce sync.Once
	hosts     *testHosts
	hostsErr  error
)

// needTestHosts starts the test hosts once per test binary; they are removed by TestMain.
func needTestHosts(t testing.TB) *testHosts {
	t.Helper()
	hostsOnce.Do(func() { hosts, hostsErr = startTestHosts() })
	if hostsErr != nil {
		t.Fatalf("test hosts (network namespace with a veth pair; needs root and iproute2): %v", hostsErr)
	}
	return hosts
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func startTestHosts() (*testHosts, error) {
	h := &testHosts{ns: fmt.Sprintf("cellt%d", os.Getpid()), hostIP: "10.200.0.1", ips: []string{testHostA, testHostB}}
	removeStaleTestHosts()
	veth, peer := fmt.Sprintf("cth%d", os.Getpid()%100000), fmt.Sprintf("ctn%d", os.Getpid()%100000)
	steps := [][]string{
		{"ip", "netns", "add", h.ns},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", h.ns},
		{"ip", "addr", "add", h.hostIP + "/24", "dev", veth},
		{"ip", "link", "set", veth, "up"},
		{"ip", "-n", h.ns, "addr", "add", testHostA + "/24", "dev", peer},
		{"ip", "-n", h.ns, "addr", "add", testHostB + "/24", "dev", peer},
		{"ip", "-n", h.ns, "link", "set", peer, "up"},
		{"ip", "-n", h.ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			h.close()
			return nil, err
		}
	}
	if err := h.serve(); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// removeStaleTestHosts deletes namespaces and links a killed earlier run left.
func removeStaleTestHosts() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "cellt") {
			_ = sh("ip", "netns", "del", f[0])
		}
	}
	links, _ := net.Interfaces()
	for _, l := range links {
		if strings.HasPrefix(l.Name, "cth") {
			_ = sh("ip", "link", "del", l.Name)
		}
	}
}

func (h *testHosts) close() {
	for _, l := range h.lns {
		_ = l.Close()
	}
	_ = sh("ip", "netns", "del", h.ns) // removes the veth pair with it
}

// inNamespace runs f on a thread that entered the test namespace; sockets f opens stay there.
func (h *testHosts) inNamespace(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open("/var/run/netns/"+h.ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer func() { _ = unix.Close(fd) }()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- err
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func (h *testHosts) serve() error {
	ca, caKey, caPEM, err := newTestCA()
	if err != nil {
		return err
	}
	h.caPEM = caPEM
	cert, err := leafCert(ca, caKey, "allowed.test", "other.test", "*.wild.test")
	if err != nil {
		return err
	}
	var tcp []net.Listener
	var udp []net.PacketConn
	err = h.inNamespace(func() error {
		for _, ip := range h.ips {
			for _, port := range []string{"80", "443", "9000"} {
				ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
				if err != nil {
					return err
				}
				tcp = append(tcp, ln)
			}
			pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "7"))
			if err != nil {
				return err
			}
			udp = append(udp, pc)
		}
		return nil
	})
	for _, l := range tcp {
		h.lns = append(h.lns, l)
	}
	for _, p := range udp {
		h.lns = append(h.lns, p)
	}
	if err != nil {
		return err
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni := ""
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
		fmt.Fprintf(w, "host=%s sni=%s local=%s\n", r.Host, sni, local)
	})
	for _, ln := range tcp {
		switch {
		case strings.HasSuffix(ln.Addr().String(), ":80"):
			go func() { _ = (&http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}).Serve(ln) }()
		case strings.HasSuffix(ln.Addr().String(), ":443"):
			tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
			go func() { _ = (&http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}).Serve(tl) }()
		default:
			go sink(ln)
		}
	}
	for _, pc := range udp {
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}()
	}
	return nil
}

// sink counts what each connection sends and answers the count once the sender half-closes.
func sink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer func() { _ = c.Close() }()
			n, _ := io.Copy(io.Discard, bufio.NewReaderSize(c, 1<<20))
			fmt.Fprintf(c, "%d\n", n)
		}()
	}
}

func newTestCA() (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Cell test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return ca, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func leafCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, names ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
