package channel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/yamux"
)

// PortName is the name of the virtio-serial port that carries the channel.
const PortName = "ctl"

// IdleMarker is what envd prints on the guest's console each time it is ready for another host:
// after the host has left, it tells the host that envd has let go of the session (see
// vmm.VM.LeaveGuest).
const IdleMarker = "cell-envd: waiting for a host"

// yamuxConfig is shared by both ends. Keepalives are off: an idle guest under TCG should not be
// woken every few seconds, and the end of the byte stream already tells each side the other left.
func yamuxConfig(log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.MaxStreamWindowSize = 4 << 20
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	return cfg
}

// Host is the host's end of a guest channel: a yamux session whose streams carry HTTP to envd.
type Host struct {
	sess *yamux.Session
	http *http.Client
}

// Connect runs the handshake on conn (QEMU's socket for the guest's port) and starts the
// session. init, when not nil, goes with the handshake to the guest's GuestHooks.Init; a guest
// that refuses it fails Connect with ErrInitRefused. Connect owns conn from then on: Close
// releases it, and so does a failed Connect. ctx bounds the handshake only.
func Connect(ctx context.Context, conn io.ReadWriteCloser, log *slog.Logger, init []byte) (*Host, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	br, err := hostHandshake(ctx, conn, init)
	if !stop() {
		// ctx ended: conn is closed (or closing); report the cancellation.
		_ = conn.Close()
		return nil, fmt.Errorf("channel: waiting for the guest: %w", context.Cause(ctx))
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	cfg := yamuxConfig(log)
	// The host never accepts streams from the guest; a backlog of one bounds what a hostile guest
	// can queue.
	cfg.AcceptBacklog = 1
	sess, err := yamux.Client(rwc{br, &coalescer{w: conn}, conn}, cfg)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("channel: starting session: %w", err)
	}
	h := &Host{sess: sess}
	h.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			s, err := sess.OpenStream()
			if err != nil {
				return nil, fmt.Errorf("channel: opening stream: %w", err)
			}
			return s, nil
		},
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// The guest is hostile: bound what it may make the host buffer.
		MaxResponseHeaderBytes: 64 << 10,
		WriteBufferSize:        64 << 10,
		ReadBufferSize:         64 << 10,
	}}
	return h, nil
}

// HTTPClient returns a client whose connections are streams of this session. Any URL host
// works; by convention Cell uses http://envd.
func (h *Host) HTTPClient() *http.Client { return h.http }

// Done is closed when the session has ended (the guest went away or Close was called).
func (h *Host) Done() <-chan struct{} { return h.sess.CloseChan() }

// Ping measures one session-level round trip to the guest.
func (h *Host) Ping() (time.Duration, error) { return h.sess.Ping() }

// Close ends the session and the underlying connection. It is idempotent.
func (h *Host) Close() error {
	h.http.CloseIdleConnections()
	return h.sess.Close()
}

// Serve runs the guest side on conn: it answers the host's handshake (giving hooks the host's
// clock, randomness and init payload), then serves the session as a net.Listener of streams
// until it ends. The caller owns conn.
func Serve(conn io.ReadWriteCloser, log *slog.Logger, hooks GuestHooks) (*yamux.Session, error) {
	br, err := guestHandshake(conn, hooks)
	if err != nil {
		return nil, err
	}
	sess, err := yamux.Server(rwc{br, &coalescer{w: conn}, conn}, yamuxConfig(log))
	if err != nil {
		return nil, fmt.Errorf("channel: starting session: %w", err)
	}
	return sess, nil
}
