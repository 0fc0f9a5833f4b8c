package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/envd/filesystem"
	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/internal/channel"
	"github.com/cellhq/cell/pkg/envd"
	"github.com/cellhq/cell/proto/filesystem/filesystemconnect"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// maxInitBody bounds the /init request, as the channel bounds an init that comes with its
// handshake. It must hold what the host sends: env vars that came through the host's API in a
// body of at most 1 MiB, encoded again (Cell's host escapes no HTML, so a string grows at most
// 2× — U+2028/U+2029 become \u escapes — plus the other fields).
const maxInitBody = channel.MaxInit

// Services are what the handler serves.
type Services struct {
	Defaults *state.Defaults
	Users    *process.Users
	Process  *process.Service
	FS       *filesystem.Service
	Metrics  *Metrics
	// PowerOff is called (once per request) for envd.PowerOffPath.
	PowerOff func()
	// Sync flushes the file systems, for envd.SyncPath (nil: sync(2)).
	Sync func()
	// SetClock sets the guest's wall clock (nil: left alone).
	SetClock func(time.Time) error
	// SetHostname applies /init's host name (nil: left alone).
	SetHostname func(string) error
	Log         *slog.Logger
}

// Handler returns envd's HTTP handler.
func Handler(s Services) http.Handler {
	mux := http.NewServeMux()
	// Responses are never compressed: connect-go would gzip every message a client accepts it
	// for (its default minimum size is 0), and the guest's CPU, emulated under TCG, is dearer
	// than the channel's bytes (gzip made the end event of a command ~0.8 ms late).
	noCompress := connect.WithCompressMinBytes(math.MaxInt)
	path, h := processconnect.NewProcessHandler(s.Process, noCompress)
	mux.Handle(path, h)
	path, h = filesystemconnect.NewFilesystemHandler(s.FS, noCompress)
	mux.Handle(path, h)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Envd-envd.Version", envd.Version)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /envs", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.Defaults.Envs())
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		m, err := s.Metrics.Read()
		if err != nil {
			filesystem.WriteError(w, http.StatusInternalServerError, "metrics: %v", err)
			return
		}
		writeJSON(w, m)
	})
	mux.HandleFunc("POST /init", s.init)
	files := &filesystem.Files{Defaults: s.Defaults, Users: s.Users}
	mux.Handle("/files", files)
	mux.HandleFunc("GET "+envd.LocalTCPPath, localTCP)
	mux.HandleFunc("POST "+envd.PowerOffPath, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go s.PowerOff()
	})
	mux.HandleFunc("POST "+envd.SyncPath, func(w http.ResponseWriter, _ *http.Request) {
		if s.Sync != nil {
			s.Sync()
		} else {
			unix.Sync()
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// No Date header: the host's proxy dates what it forwards, and formatting a date is a
		// detour of cold code through package time on a clone's first request under TCG.
		w.Header()["Date"] = nil
		// /health is open; /files checks the token or a signed URL itself; the rest need the token.
		if r.URL.Path != "/health" && r.URL.Path != "/files" && !s.Defaults.CheckToken(r.Header.Get(envd.AccessTokenHeader)) {
			if strings.HasPrefix(r.URL.Path, "/process.") || strings.HasPrefix(r.URL.Path, "/filesystem.") {
				// A Connect error, which Connect clients read from any non-200 answer.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"code":"unauthenticated","message":"invalid or missing access token"}`)
				return
			}
			filesystem.WriteError(w, http.StatusUnauthorized, "invalid or missing access token")
			return
		}
		if r.URL.Path == processconnect.ProcessStartProcedure || r.URL.Path == processconnect.ProcessConnectProcedure {
			h := &process.FlushHold{}
			w, r = process.HoldingWriter(w, h), r.WithContext(process.WithFlushHold(r.Context(), h))
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (s Services) init(w http.ResponseWriter, r *http.Request) {
	var req envd.InitRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxInitBody))
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
			filesystem.WriteError(w, http.StatusRequestEntityTooLarge, "init: the body is over %d bytes", maxInitBody)
			return
		}
		filesystem.WriteError(w, http.StatusBadRequest, "init: %v", err)
		return
	}
	if status, err := s.apply(req); err != nil {
		filesystem.WriteError(w, status, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ApplyInit applies an init that came with the channel's handshake: the same JSON body as
// POST /init's, with the same checks.
func (s Services) ApplyInit(body []byte) error {
	var req envd.InitRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	_, err := s.apply(req)
	return err
}

// apply applies req; a refusal comes with the HTTP status that answers it.
func (s Services) apply(req envd.InitRequest) (int, error) {
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		if _, err := s.Users.Lookup(*req.DefaultUser); err != nil {
			return http.StatusBadRequest, fmt.Errorf("defaultUser: user %q not found", *req.DefaultUser)
		}
	}
	if req.Timestamp != nil {
		SyncClock(s.Log, s.SetClock, *req.Timestamp)
	}
	if req.Hostname != nil && s.SetHostname != nil {
		if len(*req.Hostname) == 0 || len(*req.Hostname) > 64 {
			return http.StatusBadRequest, errors.New("hostname: 1 to 64 bytes")
		}
		if err := s.SetHostname(*req.Hostname); err != nil {
			return http.StatusInternalServerError, fmt.Errorf("hostname: %w", err)
		}
	}
	s.Defaults.Apply(state.Update{User: req.DefaultUser, Workdir: req.DefaultWorkdir, Envs: req.EnvVars, Token: req.AccessToken,
		SandboxID: req.SandboxID, TemplateID: req.TemplateID})
	return 0, nil
}

// clockSlack is how far the guest's clock may be from the host's before envd sets it.
const clockSlack = 50 * time.Millisecond

// SyncClock sets the wall clock to host (with set) when it is more than clockSlack away from it.
func SyncClock(log *slog.Logger, set func(time.Time) error, host time.Time) {
	if set == nil {
		return
	}
	if d := time.Since(host); d > clockSlack || d < -clockSlack {
		if err := set(host); err != nil {
			log.Warn("setting the clock", "err", err)
		}
	}
}

// SetClock sets the system wall clock.
func SetClock(t time.Time) error {
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	return nil
}

// Conn is one host visit on the channel.
type Conn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	Close() error
}

// Visits are what envd does around each host visit on the channel; every field may be nil.
type Visits struct {
	// Idle is called each time envd is ready for another host (before every visit but the first).
	Idle func()
	// SetClock sets the guest's wall clock to the host's time, which comes with each handshake.
	SetClock func(time.Time) error
	// Reseed mixes the host randomness that comes with each handshake into the kernel's
	// generator: a guest resumed from a snapshot must not repeat the random bytes of another
	// resume of the same snapshot.
	Reseed func([]byte) error
	// Init applies the init a new sandbox's first handshake carries (Services.ApplyInit).
	Init func([]byte) error
}

// ServeChannel serves h on every host visit that next returns, until ctx ends.
func ServeChannel(ctx context.Context, log *slog.Logger, next func() Conn, h http.Handler, v Visits) {
	hooks := channel.GuestHooks{
		Clock: func(t time.Time) { SyncClock(log, v.SetClock, t) },
		Seed: func(b []byte) {
			if v.Reseed == nil {
				return
			}
			if err := v.Reseed(b); err != nil {
				log.Error("reseeding the kernel's random generator with the host's randomness", "err", err)
			}
		},
		Init: v.Init,
	}
	for first := true; ctx.Err() == nil; first = false {
		if v.Idle != nil && !first {
			v.Idle()
		}
		conn := next()
		sess, err := channel.Serve(conn, log, hooks)
		if err != nil {
			log.Debug("channel handshake ended", "err", err)
			_ = conn.Close()
			continue
		}
		log.Debug("host connected")
		// HTTP/1.1 only (the host speaks nothing else on the channel): a server that may speak
		// HTTP/2 configures it on every Serve, cold code in each restored clone.
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, Protocols: new(http.Protocols)}
		srv.Protocols.SetHTTP1(true)
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
