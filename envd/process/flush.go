package process

import (
	"context"
	"net/http"
	"sync/atomic"
)

// FlushHold lets an event stream hold back the flush of its last event, so that the event and
// the end of the stream reach the client in one write: under TCG every write from the guest
// costs about a millisecond and a half, a third of a short command's round trip.
type FlushHold struct{ held atomic.Bool }

type flushHoldKey struct{}

// WithFlushHold returns ctx carrying h for the stream's handler.
func WithFlushHold(ctx context.Context, h *FlushHold) context.Context {
	return context.WithValue(ctx, flushHoldKey{}, h)
}

// holdFlushes makes later flushes of the request's response no-ops (the server flushes once
// when the handler returns).
func holdFlushes(ctx context.Context) {
	if h, ok := ctx.Value(flushHoldKey{}).(*FlushHold); ok {
		h.held.Store(true)
	}
}

// HoldingWriter wraps w so that its flushes are skipped once h is held.
func HoldingWriter(w http.ResponseWriter, h *FlushHold) http.ResponseWriter {
	return &holdingWriter{ResponseWriter: w, h: h}
}

type holdingWriter struct {
	http.ResponseWriter
	h *FlushHold
}

func (w *holdingWriter) Flush() {
	if w.h.held.Load() {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *holdingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
