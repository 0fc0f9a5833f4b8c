package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/templates"
	"github.com/cellhq/cell/pkg/e2bapi"
)

// Templates is the template service the API serves (package templates).
type Templates interface {
	Create(ctx context.Context, req templates.CreateRequest) (templates.Created, error)
	Files(ctx context.Context, team, tid, hash, base string) (present bool, putURL string, err error)
	Upload(ctx context.Context, tid, hash string, q url.Values, body io.Reader, length int64) error
	Start(ctx context.Context, team, tid, bid string, spec build.Spec) error
	Status(ctx context.Context, team, tid, bid string, offset int) (e2bapi.BuildStatus, error)
	Logs(ctx context.Context, team, tid, bid string, offset, limit int) ([]e2bapi.BuildLogEntry, error)
	Resolve(ctx context.Context, team, idOrName string) (snapshot, templateID string, err error)
	List(ctx context.Context, team string) ([]e2bapi.Template, error)
	Get(ctx context.Context, team, idOrName string) (e2bapi.Template, error)
	Delete(ctx context.Context, team, idOrName string) error
	Tags(ctx context.Context, team, idOrName string) ([]e2bapi.TemplateTag, error)
	AssignTags(ctx context.Context, team, target string, tags []string) (buildID string, err error)
	RemoveTags(ctx context.Context, team, name string, tags []string) error
}

// routeTemplates registers the template routes (E2B's), or 501s without a template service.
func (a *API) routeTemplates() {
	if a.cfg.Templates == nil {
		for _, p := range []string{"POST /v3/templates", "POST /v2/templates/{tid}/builds/{bid}", "GET /templates/{tid}/builds/{bid}/status",
			"GET /templates/{tid}/builds/{bid}/logs", "GET /templates/{tid}/files/{hash}", "GET /templates", "GET /v2/templates",
			"GET /templates/{tid}", "POST /templates/tags", "DELETE /templates/tags"} {
			a.route(p, func(w http.ResponseWriter, r *http.Request, _ string) { notImplemented(w, r.Pattern) })
		}
		return
	}
	a.route("POST /v3/templates", a.createTemplate)
	a.route("GET /templates/{tid}/files/{hash}", a.templateFiles)
	// The upload carries no API key (E2B's SDKs send none): its URL's signature is the key.
	a.mux.HandleFunc("PUT /templates/{tid}/files/{hash}", a.uploadFiles)
	a.route("POST /v2/templates/{tid}/builds/{bid}", a.startBuild)
	a.route("GET /templates/{tid}/builds/{bid}/status", a.buildStatus)
	a.route("GET /templates/{tid}/builds/{bid}/logs", a.buildLogs)
	a.route("GET /templates", a.listTemplates)
	a.route("GET /v2/templates", a.listTemplatesV2)
	a.route("GET /templates/{tid}", a.getTemplate)
	a.route("POST /templates/tags", a.assignTags)
	a.route("DELETE /templates/tags", a.removeTags)
}

// templateFail answers a template service error.
func templateFail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, templates.ErrBusy):
		writeError(w, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, templates.ErrUploadAuth):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, templates.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	default:
		fail(w, err)
	}
}

func (a *API) createTemplate(w http.ResponseWriter, r *http.Request, team string) {
	var req e2bapi.TemplateCreate
	if !decode(w, r, &req, false) {
		return
	}
	name := req.Name
	if name == "" {
		name = req.Alias
	}
	if name == "" {
		writeError(w, http.StatusBadRequest, "name: required")
		return
	}
	c, err := a.cfg.Templates.Create(r.Context(), templates.CreateRequest{Team: team, Name: name, Tags: req.Tags, CPUs: req.CPUCount, MemoryMiB: req.MemoryMB,
		MinFreeDiskMiB: req.MinFreeDiskMB})
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, e2bapi.TemplateCreated{TemplateID: c.TemplateID, BuildID: c.BuildID, Public: false,
		Names: c.Names, Tags: c.Tags, Aliases: []string{c.Base}})
}

// baseURL is Cell's address as the client reached it: where it can PUT its files.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (a *API) templateFiles(w http.ResponseWriter, r *http.Request, team string) {
	present, u, err := a.cfg.Templates.Files(r.Context(), team, r.PathValue("tid"), r.PathValue("hash"), baseURL(r))
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, e2bapi.TemplateFiles{Present: present, URL: u})
}

func (a *API) uploadFiles(w http.ResponseWriter, r *http.Request) {
	w = &restWriter{ResponseWriter: w, log: a.cfg.Log.With("method", r.Method, "path", r.URL.Path), bodyTime: a.bodyTime}
	if r.ContentLength < 0 {
		writeError(w, http.StatusLengthRequired, "Content-Length: required")
		return
	}
	if err := a.cfg.Templates.Upload(r.Context(), r.PathValue("tid"), r.PathValue("hash"), r.URL.Query(), r.Body, r.ContentLength); err != nil {
		templateFail(w, err)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

func (a *API) startBuild(w http.ResponseWriter, r *http.Request, team string) {
	var req e2bapi.BuildStart
	if !decode(w, r, &req, false) {
		return
	}
	spec := build.Spec{FromImage: req.FromImage, Registry: req.FromImageRegistry, FromTemplate: req.FromTemplate, Force: req.Force, StartCmd: req.StartCmd, ReadyCmd: req.ReadyCmd}
	for _, st := range req.Steps {
		spec.Steps = append(spec.Steps, build.Step{Type: st.Type, Args: st.Args, FilesHash: st.FilesHash, Force: st.Force})
	}
	if err := a.cfg.Templates.Start(r.Context(), team, r.PathValue("tid"), r.PathValue("bid"), spec); err != nil {
		templateFail(w, err)
		return
	}
	// No body, said so: E2B's SDK parses a 2xx body unless its length is 0.
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// intParam reads an optional non-negative integer query parameter.
func intParam(w http.ResponseWriter, r *http.Request, name string) (int, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: want a non-negative integer", name))
		return 0, false
	}
	return n, true
}

func (a *API) buildStatus(w http.ResponseWriter, r *http.Request, team string) {
	offset, ok := intParam(w, r, "logsOffset")
	if !ok {
		return
	}
	st, err := a.cfg.Templates.Status(r.Context(), team, r.PathValue("tid"), r.PathValue("bid"), offset)
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) buildLogs(w http.ResponseWriter, r *http.Request, team string) {
	offset, ok := intParam(w, r, "cursor")
	if !ok {
		return
	}
	limit, ok := intParam(w, r, "limit")
	if !ok {
		return
	}
	logs, err := a.cfg.Templates.Logs(r.Context(), team, r.PathValue("tid"), r.PathValue("bid"), offset, limit)
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e2bapi.BuildLogs{Logs: logs})
}

func (a *API) listTemplates(w http.ResponseWriter, r *http.Request, team string) {
	list, err := a.cfg.Templates.List(r.Context(), team)
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// listTemplatesV2 is GET /v2/templates: the list in pages of at most limit (100), oldest first;
// X-Next-Token, when set, names where the next page starts (?nextToken=).
func (a *API) listTemplatesV2(w http.ResponseWriter, r *http.Request, team string) {
	q := r.URL.Query()
	limit := 100
	if raw := q.Get("limit"); raw != "" {
		n, err := pageLimit(raw)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		limit = n
	}
	var afterMs int64
	var afterID string
	if raw := q.Get("nextToken"); raw != "" {
		ms, id, ok := strings.Cut(raw, ".")
		n, err := strconv.ParseInt(ms, 10, 64)
		if !ok || err != nil || n < 0 || ids.Validate("template", id) != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("nextToken: %q is not a token this server issued", raw))
			return
		}
		afterMs, afterID = n, id
	}
	list, err := a.cfg.Templates.List(r.Context(), team)
	if err != nil {
		templateFail(w, err)
		return
	}
	// Oldest first, by creation and then id: a token is a place in that order, so templates
	// made or removed meanwhile move no other page.
	key := func(t e2bapi.Template) (int64, string) { return t.CreatedAt.UnixMilli(), t.TemplateID }
	sort.SliceStable(list, func(i, j int) bool {
		mi, ii := key(list[i])
		mj, ij := key(list[j])
		return mi < mj || mi == mj && ii < ij
	})
	out := []e2bapi.Template{}
	for _, t := range list {
		ms, id := key(t)
		if afterID != "" && (ms < afterMs || ms == afterMs && id <= afterID) {
			continue
		}
		if len(out) == limit {
			last := out[len(out)-1]
			lms, lid := key(last)
			w.Header().Set("X-Next-Token", strconv.FormatInt(lms, 10)+"."+lid)
			break
		}
		out = append(out, t)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) getTemplate(w http.ResponseWriter, r *http.Request, team string) {
	t, err := a.cfg.Templates.Get(r.Context(), team, r.PathValue("tid"))
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (a *API) assignTags(w http.ResponseWriter, r *http.Request, team string) {
	var req e2bapi.TagsAssign
	if !decode(w, r, &req, false) {
		return
	}
	bid, err := a.cfg.Templates.AssignTags(r.Context(), team, req.Target, req.Tags)
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, e2bapi.TagsAssigned{Tags: req.Tags, BuildID: bid})
}

func (a *API) removeTags(w http.ResponseWriter, r *http.Request, team string) {
	var req e2bapi.TagsRemove
	if !decode(w, r, &req, false) {
		return
	}
	if err := a.cfg.Templates.RemoveTags(r.Context(), team, req.Name, req.Tags); err != nil {
		templateFail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) templateTags(w http.ResponseWriter, r *http.Request, team string) {
	if a.cfg.Templates == nil {
		notImplemented(w, "GET /templates/{tid}/tags")
		return
	}
	tags, err := a.cfg.Templates.Tags(r.Context(), team, r.PathValue("tid"))
	if err != nil {
		templateFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, tags)
}

func (a *API) templateAlias(w http.ResponseWriter, r *http.Request, team string) {
	alias := r.PathValue("alias")
	if a.cfg.Templates != nil {
		if t, err := a.cfg.Templates.Get(r.Context(), team, alias); err == nil {
			writeJSON(w, http.StatusOK, e2bapi.TemplateAlias{TemplateID: t.TemplateID, Public: false})
			return
		} else if !errors.Is(err, manager.ErrNotFound) {
			templateFail(w, err)
			return
		}
	}
	id, public, err := a.cfg.Manager.TemplateAlias(team, alias)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e2bapi.TemplateAlias{TemplateID: id, Public: public})
}

// deleteTemplate removes a built template, or else a snapshot (E2B deletes both here).
func (a *API) deleteTemplate(w http.ResponseWriter, r *http.Request, team string) {
	tid := r.PathValue("tid")
	if a.cfg.Templates != nil {
		err := a.cfg.Templates.Delete(r.Context(), team, tid)
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !errors.Is(err, manager.ErrNotFound) {
			templateFail(w, err)
			return
		}
	}
	if err := a.cfg.Manager.DeleteTemplate(team, tid); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resolveTemplate turns a create's templateID (a built template's id or name[:tag], a
// snapshot's id, or base) into the snapshot its sandbox starts from and, for a built template,
// the template's id.
func (a *API) resolveTemplate(ctx context.Context, team, id string) (snapshot, templateID string, err error) {
	if a.cfg.Templates == nil || id == "base" {
		return id, "", nil
	}
	snap, tid, err := a.cfg.Templates.Resolve(ctx, team, id)
	if errors.Is(err, manager.ErrNotFound) && ids.Validate("templateID", id) == nil {
		return id, "", nil // a snapshot's id, or not found by the manager either
	}
	return snap, tid, err
}
