package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/pkg/e2bapi"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, e2bapi.Error{Code: code, Message: msg})
}

// fail answers a manager error with its HTTP status.
func fail(w http.ResponseWriter, err error) {
	code, msg, id := answerFor(err)
	if id != "" {
		logError(w, id, err)
	}
	writeError(w, code, msg)
}

// answerFor maps a manager error to the status and message a client gets. A 4xx says what was
// wrong with the request; a 5xx only what failed, with a new error id: the error itself (host
// paths, QEMU's output, the guest's console) is for the daemon's log, with the same id.
func answerFor(err error) (code int, msg, id string) {
	switch {
	case errors.Is(err, manager.ErrInvalid):
		return http.StatusBadRequest, err.Error(), ""
	case errors.Is(err, manager.ErrNotFound):
		return http.StatusNotFound, err.Error(), ""
	case errors.Is(err, manager.ErrConflict):
		return http.StatusConflict, err.Error(), ""
	case errors.Is(err, manager.ErrShutdown):
		return http.StatusServiceUnavailable, manager.ErrShutdown.Error(), ""
	case errors.Is(err, manager.ErrInsufficientStorage):
		return http.StatusInsufficientStorage, err.Error(), ""
	case errors.Is(err, context.Canceled):
		return 499, "client closed the request", ""
	}
	what := "internal error"
	switch {
	case errors.Is(err, manager.ErrBootFailed):
		what = manager.ErrBootFailed.Error()
	case errors.Is(err, manager.ErrPauseUndone):
		what = manager.ErrPauseUndone.Error()
	}
	id = errorID()
	return http.StatusInternalServerError, fmt.Sprintf("%s (error id %s: the details are in cell serve's log)", what, id), id
}

// internalError answers 500 saying what failed, and logs err with the answer's error id.
func internalError(w http.ResponseWriter, what string, err error) {
	id := errorID()
	logError(w, id, err)
	writeError(w, http.StatusInternalServerError, fmt.Sprintf("%s (error id %s: the details are in cell serve's log)", what, id))
}

// logError logs a 5xx's error with its id, through the log a REST handler's writer carries.
func logError(w http.ResponseWriter, id string, err error) {
	if rw, ok := w.(*restWriter); ok {
		rw.log.Error("request failed", "error_id", id, "err", err)
	}
}

// errorID names one failure in an answer and in the log.
func errorID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
