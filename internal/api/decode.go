package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/manager"
)

// decode reads a JSON body strictly: bounded size and time, no unknown fields, one value.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q: expected application/json", ct))
		return false
	}
	// A client that sends its body slowly must not hold the handler: the body, to its end, has
	// bodyTime. The deadline is lifted once it is read, or it would end the request (net/http
	// watches the connection for a client going away once the body is read); after a bad body it
	// stays, so that net/http, discarding the rest, does not wait for it forever either.
	bodyTime := restBodyTime
	if rw, ok := w.(*restWriter); ok {
		bodyTime = rw.bodyTime
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyTime))
	body := http.MaxBytesReader(w, r.Body, MaxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) && optional {
		err = nil
	} else if err == nil {
		// The rest must be white space, read to its end.
		var only bool
		if only, err = onlySpace(io.MultiReader(dec.Buffered(), body)); err == nil && !only {
			writeError(w, http.StatusBadRequest, "request body: more than one JSON value")
			return false
		}
	}
	if err == nil {
		_ = rc.SetReadDeadline(time.Time{})
		return true
	}
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "request body: a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		writeError(w, http.StatusBadRequest, "request body: truncated JSON")
	case errors.Is(err, os.ErrDeadlineExceeded):
		writeError(w, http.StatusRequestTimeout, fmt.Sprintf("request body: not received within %v", bodyTime))
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body: larger than %d bytes", MaxBody))
	case errors.As(err, &se):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("request body: malformed JSON at byte %d: %v", se.Offset, err))
	case errors.As(err, &te):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("request body: field %q: expected %s, got %s", te.Field, te.Type, te.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		writeError(w, http.StatusBadRequest, "request body: "+strings.TrimPrefix(err.Error(), "json: "))
	default:
		writeError(w, http.StatusBadRequest, "request body: "+err.Error())
	}
	return false
}

// onlySpace reads r to its end and says whether it held nothing but JSON white space.
func onlySpace(r io.Reader) (bool, error) {
	buf := make([]byte, 4096)
	only := true
	for {
		n, err := r.Read(buf)
		for _, c := range buf[:n] {
			if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
				only = false
			}
		}
		if err == io.EOF {
			return only, nil
		}
		if err != nil {
			return only, err
		}
	}
}

// timeoutField checks a timeout in whole seconds (a JSON "timeout" field) and converts it; on a
// bad value it answers 400 naming the field. The range is checked on the integer: converted
// first, a huge value overflows time.Duration into a short or negative one.
func timeoutField(w http.ResponseWriter, seconds int) (time.Duration, bool) {
	d, err := timeoutSeconds(seconds)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return 0, false
	}
	return d, true
}

func timeoutSeconds(seconds int) (time.Duration, error) {
	limit := int(manager.MaxTimeout / time.Second)
	if seconds < 0 || seconds > limit {
		return 0, fmt.Errorf("timeout: must be between 0 and %d seconds, got %d", limit, seconds)
	}
	return time.Duration(seconds) * time.Second, nil
}
