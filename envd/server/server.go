package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/internal/channel"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// Version is envd's version as reported to clients. E2B's SDKs enable features by it.
const Version = "0.2.0"

// PowerOffPath asks envd to power the guest off (Cell-specific, not part of E2B's API).
const PowerOffPath = "/cell/poweroff"

// Handler returns envd's HTTP handler. powerOff is called (once per request) for PowerOffPath.
func Handler(procs *process.Service, powerOff func()) http.Handler {
	mux := http.NewServeMux()
	path, h := processconnect.NewProcessHandler(procs)
	mux.Handle(path, h)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Envd-Version", Version)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+PowerOffPath, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go powerOff()
	})
	return mux
}

// Conn is one host visit on the channel.
type Conn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	Close() error
}

// ServeChannel serves h on every host visit that next returns, until ctx ends.
func ServeChannel(ctx context.Context, log *slog.Logger, next func() Conn, h http.Handler) {
	for ctx.Err() == nil {
		conn := next()
		sess, err := channel.Serve(conn, log)
		if err != nil {
			log.Debug("channel handshake ended", "err", err)
			_ = conn.Close()
			continue
		}
		log.Debug("host connected")
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
		stop := context.AfterFunc(ctx, func() { _ = sess.Close() })
		err = srv.Serve(sess)
		stop()
		_ = sess.Close()
		_ = conn.Close()
		if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			log.Debug("session ended", "err", err)
		}
	}
}
