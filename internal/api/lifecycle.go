package api

import (
	"net/http"
	"time"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/pkg/e2bapi"
)

func (a *API) timeout(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.TimeoutRequest
	if !decode(w, r, &body, false) {
		return
	}
	if body.Timeout == nil {
		writeError(w, http.StatusBadRequest, "timeout: required (seconds)")
		return
	}
	timeout, ok := timeoutField(w, *body.Timeout)
	if !ok {
		return
	}
	if _, err := a.cfg.Manager.SetTimeout(r.Context(), team, r.PathValue("id"), timeout); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) refresh(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.RefreshRequest
	if !decode(w, r, &body, true) {
		return
	}
	d := 60
	if body.Duration != nil {
		d = *body.Duration
	}
	if d < 0 || d > 3600 {
		writeError(w, http.StatusBadRequest, "duration: must be between 0 and 3600 seconds")
		return
	}
	if _, err := a.cfg.Manager.SetTimeout(r.Context(), team, r.PathValue("id"), time.Duration(d)*time.Second); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) pause(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.PauseRequest
	if !decode(w, r, &body, true) {
		return
	}
	if err := a.cfg.Manager.Pause(r.Context(), team, r.PathValue("id"), body.Memory == nil || *body.Memory); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resumeRequest is what connect and resume have in common: it reads the body and resumes team's
// sandbox if it is paused, to live the body's timeout or its own. On a bad body or a failed
// resume it answers the request itself and returns ok false.
func (a *API) resumeRequest(w http.ResponseWriter, r *http.Request, team string) (res resumeResult, ok bool) {
	var body e2bapi.ConnectRequest
	if !decode(w, r, &body, true) {
		return res, false
	}
	var timeout time.Duration
	if body.Timeout != nil {
		if timeout, ok = timeoutField(w, *body.Timeout); !ok {
			return res, false
		}
		res.timeout = &timeout
	}
	var err error
	res.info, res.resumed, err = a.cfg.Manager.Resume(r.Context(), team, r.PathValue("id"), timeout, body.Memory == nil || *body.Memory)
	if err != nil {
		fail(w, err)
		return res, false
	}
	return res, true
}

// resumeResult is what resumeRequest did.
type resumeResult struct {
	info    manager.Info
	resumed bool           // false: the sandbox was running
	timeout *time.Duration // the body's (nil: it named none)
}

// connect is POST /sandboxes/{id}/connect: a paused sandbox is resumed (201) to live the body's
// timeout, or its own timeout when the body names none; a running one (200) lives on, its end
// moved later when the body's timeout reaches past it, never earlier.
func (a *API) connect(w http.ResponseWriter, r *http.Request, team string) {
	res, ok := a.resumeRequest(w, r, team)
	if !ok {
		return
	}
	if res.resumed {
		writeJSON(w, http.StatusCreated, a.sandboxResponse(res.info))
		return
	}
	info := res.info
	if res.timeout != nil && time.Now().Add(*res.timeout).After(info.EndAt) {
		var err error
		if info, err = a.cfg.Manager.SetTimeout(r.Context(), team, r.PathValue("id"), *res.timeout); err != nil {
			fail(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, a.sandboxResponse(info))
}

// resume is E2B's deprecated POST /sandboxes/{id}/resume: 201 when resumed, 409 when running.
func (a *API) resume(w http.ResponseWriter, r *http.Request, team string) {
	res, ok := a.resumeRequest(w, r, team)
	if !ok {
		return
	}
	if !res.resumed {
		writeError(w, http.StatusConflict, "sandbox "+res.info.ID+" is already running")
		return
	}
	writeJSON(w, http.StatusCreated, a.sandboxResponse(res.info))
}
