package api

import (
	"net/http"

	"github.com/cellhq/cell/pkg/e2bapi"
)

// health is GET /health, unauthenticated: the daemon answers, and how full its pools are.
func (a *API) health(w http.ResponseWriter, _ *http.Request) {
	h := e2bapi.Health{Status: "ok", Pools: map[string]e2bapi.Pool{}}
	for name, p := range a.cfg.Manager.Pools() {
		h.Pools[name] = e2bapi.Pool{Ready: p.Ready, Size: p.Size}
	}
	writeJSON(w, http.StatusOK, h)
}
