package api

import (
	"net/http"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/pkg/e2bapi"
)

func (a *API) updateNetwork(w http.ResponseWriter, r *http.Request, team string) {
	var body e2bapi.NetworkUpdate
	if !decode(w, r, &body, false) {
		return
	}
	if body.Rules != nil || body.EgressProxy != nil {
		writeError(w, http.StatusNotImplemented, "network.rules and network.egressProxy: not supported by Cell yet")
		return
	}
	u := manager.NetworkUpdate{AllowOut: body.AllowOut, DenyOut: body.DenyOut, AllowInternet: body.AllowInternetAccess}
	if body.AllowInternetSnake != nil {
		if u.AllowInternet != nil && *u.AllowInternet != *body.AllowInternetSnake {
			writeError(w, http.StatusBadRequest, "allowInternetAccess and allow_internet_access disagree")
			return
		}
		u.AllowInternet = body.AllowInternetSnake
	}
	if _, err := a.cfg.Manager.UpdateNetwork(r.Context(), team, r.PathValue("id"), u); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
