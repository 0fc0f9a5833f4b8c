package api

import (
	"net/http"

	"github.com/cellhq/cell/pkg/e2bapi"
)

func (a *API) templateAlias(w http.ResponseWriter, r *http.Request, team string) {
	id, public, err := a.cfg.Manager.TemplateAlias(team, r.PathValue("alias"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e2bapi.TemplateAlias{TemplateID: id, Public: public})
}

func (a *API) deleteTemplate(w http.ResponseWriter, r *http.Request, team string) {
	if err := a.cfg.Manager.DeleteTemplate(team, r.PathValue("tid")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
