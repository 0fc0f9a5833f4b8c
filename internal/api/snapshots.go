package api

import (
	"net/http"
	"time"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/pkg/e2bapi"
)

func snapshotResponse(s manager.SnapshotInfo) e2bapi.Snapshot {
	r := e2bapi.Snapshot{SnapshotID: s.ID, Names: []string{}}
	if s.Name != "" {
		r.Names = append(r.Names, s.Name)
	}
	return r
}

func (a *API) snapshot(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.SnapshotRequest
	if !decode(w, r, &body, true) {
		return
	}
	snap, err := a.cfg.Manager.Snapshot(r.Context(), team, r.PathValue("id"), body.Name)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, snapshotResponse(snap))
}

func (a *API) snapshots(w http.ResponseWriter, r *http.Request, team string) {
	q := r.URL.Query()
	out := []e2bapi.Snapshot{}
	for _, s := range a.cfg.Manager.Snapshots(team, q.Get("sandboxID")) {
		if name := q.Get("name"); name != "" && s.Name != name {
			continue
		}
		out = append(out, snapshotResponse(s))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) fork(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.ForkRequest
	if !decode(w, r, &body, false) {
		return
	}
	count := 1
	if body.Count != nil {
		count = *body.Count
	}
	var timeout time.Duration
	if body.Timeout != nil {
		var ok bool
		if timeout, ok = timeoutField(w, *body.Timeout); !ok {
			return
		}
	}
	results, err := a.cfg.Manager.Fork(r.Context(), team, r.PathValue("id"), count, timeout)
	if err != nil {
		fail(w, err)
		return
	}
	out := make([]e2bapi.ForkResult, len(results))
	for i, res := range results {
		if res.Err != nil {
			code, msg, id := answerFor(res.Err)
			if id != "" {
				logError(w, id, res.Err)
			}
			out[i].Error = &e2bapi.Error{Code: code, Message: msg}
			continue
		}
		sr := a.sandboxResponse(res.Info)
		out[i].Sandbox = &sr
	}
	writeJSON(w, http.StatusCreated, out)
}
