package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/pkg/e2bapi"
	"github.com/cellhq/cell/pkg/envd"
)

func isNull(m json.RawMessage) bool {
	s := strings.TrimSpace(string(m))
	return s == "" || s == "null" || s == "{}" || s == "[]"
}

const clientID = "cell"

func (a *API) domain() *string {
	if a.cfg.Domain == "" {
		return nil
	}
	d := a.cfg.Domain
	return &d
}

func (a *API) sandboxResponse(info manager.Info) e2bapi.Sandbox {
	res := e2bapi.Sandbox{TemplateID: info.TemplateID, SandboxID: info.ID, ClientID: clientID, EnvdVersion: envd.Version, Domain: a.domain()}
	if info.EnvdToken != "" {
		tok := info.EnvdToken
		res.EnvdAccessToken = &tok
	}
	if info.TrafficToken != "" {
		tok := info.TrafficToken
		res.TrafficAccessToken = &tok
	}
	return res
}

func (a *API) detail(info manager.Info, withToken bool) e2bapi.SandboxDetail {
	d := e2bapi.SandboxDetail{
		TemplateID: info.TemplateID, SandboxID: info.ID, ClientID: clientID, StartedAt: info.StartedAt.UTC(),
		EndAt: info.EndAt.UTC(), EnvdVersion: envd.Version, Domain: a.domain(), CPUCount: info.CPUs, MemoryMB: info.MemoryMiB,
		DiskSizeMB: info.DiskMiB, Metadata: info.Metadata, State: info.State, AllowInternetAccess: info.AllowInternet, VolumeMounts: []any{},
	}
	public := !info.Network.PrivateTraffic
	d.Network = e2bapi.NetworkConfig{AllowOut: info.Network.AllowOut, DenyOut: info.Network.DenyOut, AllowPublicTraffic: &public}
	if info.Network.MaskRequestHost != "" {
		mask := info.Network.MaskRequestHost
		d.Network.MaskRequestHost = &mask
	}
	if d.Metadata == nil {
		d.Metadata = map[string]string{}
	}
	if withToken && info.EnvdToken != "" {
		tok := info.EnvdToken
		d.EnvdAccessToken = &tok
	}
	return d
}

func (a *API) create(w http.ResponseWriter, r *http.Request, team string) {
	var req e2bapi.NewSandbox
	if !decode(w, r, &req, false) {
		return
	}
	unsupported := map[string]json.RawMessage{"mcp": req.MCP, "volumeMounts": req.VolumeMounts, "iam": req.IAM, "autoResume": req.AutoResume}
	if req.Network != nil {
		unsupported["network.rules"], unsupported["network.egressProxy"], unsupported["network.httpsPorts"] = req.Network.Rules, req.Network.EgressProxy, req.Network.HTTPSPorts
	}
	for name, v := range unsupported {
		if !isNull(v) {
			writeError(w, http.StatusNotImplemented, fmt.Sprintf("%s: not supported by Cell yet", name))
			return
		}
	}
	if req.TemplateID == "" {
		writeError(w, http.StatusBadRequest, "templateID: required")
		return
	}
	tpl, tid, err := a.resolveTemplate(r.Context(), team, req.TemplateID)
	if err != nil {
		templateFail(w, err)
		return
	}
	cr := manager.CreateRequest{Team: team, Template: tpl, TemplateID: tid, Metadata: req.Metadata, EnvVars: req.EnvVars,
		Secure: req.Secure == nil || *req.Secure, AllowInternet: req.AllowInternetAccess == nil || *req.AllowInternetAccess,
		AutoPause: req.AutoPause != nil && *req.AutoPause, AutoPauseMemory: req.AutoPauseMemory == nil || *req.AutoPauseMemory}
	if n := req.Network; n != nil {
		cr.Network = store.Network{AllowOut: n.AllowOut, DenyOut: n.DenyOut,
			PrivateTraffic: n.AllowPublicTraffic != nil && !*n.AllowPublicTraffic}
		if n.MaskRequestHost != nil {
			cr.Network.MaskRequestHost = *n.MaskRequestHost
		}
	}
	if req.Timeout != nil {
		var ok bool
		if cr.Timeout, ok = timeoutField(w, *req.Timeout); !ok {
			return
		}
	}
	if req.DiskSizeMB != nil {
		if *req.DiskSizeMB <= 0 {
			writeError(w, http.StatusBadRequest, "diskSizeMB: must be positive")
			return
		}
		cr.DiskMiB = *req.DiskSizeMB
	}
	info, err := a.cfg.Manager.Create(r.Context(), cr)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, a.sandboxResponse(info))
}

func (a *API) get(w http.ResponseWriter, r *http.Request, team string) {
	info, err := a.cfg.Manager.Get(team, r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.detail(info, true))
}

func (a *API) kill(w http.ResponseWriter, r *http.Request, team string) {
	if err := a.cfg.Manager.Kill(team, r.PathValue("id")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// filters are the list query parameters.
type filters struct {
	metadata map[string]string
	states   map[string]bool
	limit    int
	after    int64
}

func parseFilters(q url.Values, paged bool) (filters, error) {
	f := filters{limit: 100}
	if raw := q.Get("metadata"); raw != "" {
		vals, err := url.ParseQuery(raw)
		if err != nil {
			return f, fmt.Errorf("metadata: %q is not key=value pairs joined by &: %v", raw, err)
		}
		f.metadata = map[string]string{}
		for k, vs := range vals {
			// The SDK encodes keys and values before joining them; undo that too.
			key, err1 := url.QueryUnescape(k)
			val, err2 := url.QueryUnescape(vs[0])
			if err1 != nil || err2 != nil {
				return f, fmt.Errorf("metadata: bad escaping in %q", raw)
			}
			f.metadata[key] = val
		}
	}
	if raw := q.Get("state"); raw != "" {
		f.states = map[string]bool{}
		for _, s := range strings.Split(raw, ",") {
			switch s {
			case "running", "paused":
				f.states[s] = true
			default:
				return f, fmt.Errorf("state: %q must be running or paused", s)
			}
		}
	}
	if !paged {
		return f, nil
	}
	if raw := q.Get("limit"); raw != "" {
		n, err := pageLimit(raw)
		if err != nil {
			return f, err
		}
		f.limit = n
	}
	if raw := q.Get("nextToken"); raw != "" {
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			return f, fmt.Errorf("nextToken: %q is not a token this server issued", raw)
		}
		f.after = n
	}
	return f, nil
}

// pageLimit reads a listing's ?limit: E2B's pages hold 1 to 100.
func pageLimit(raw string) (int, error) {
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > 100 {
		return 0, fmt.Errorf("limit: %q must be an integer from 1 to 100", raw)
	}
	return n, nil
}

func (f filters) match(info manager.Info) bool {
	if f.states != nil && !f.states[info.State] {
		return false
	}
	for k, v := range f.metadata {
		if info.Metadata[k] != v {
			return false
		}
	}
	return info.Seq > f.after
}

func (a *API) listV1(w http.ResponseWriter, r *http.Request, team string) {
	f, err := parseFilters(r.URL.Query(), false)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	out := []e2bapi.SandboxDetail{}
	for _, info := range a.cfg.Manager.List(team) {
		if f.match(info) {
			out = append(out, a.detail(info, false))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) listV2(w http.ResponseWriter, r *http.Request, team string) {
	f, err := parseFilters(r.URL.Query(), true)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	out := []e2bapi.SandboxDetail{}
	var last int64
	more := false
	for _, info := range a.cfg.Manager.List(team) {
		if !f.match(info) {
			continue
		}
		if len(out) == f.limit {
			more = true
			break
		}
		out = append(out, a.detail(info, false))
		last = info.Seq
	}
	if more {
		w.Header().Set("X-Next-Token", strconv.FormatInt(last, 10))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request, team string) {
	id := r.PathValue("id")
	if _, err := a.cfg.Manager.Get(team, id); err != nil {
		fail(w, err)
		return
	}
	hc, err := a.cfg.Manager.Envd(id)
	if err != nil {
		fail(w, err)
		return
	}
	m, err := a.cfg.Manager.EnvdMetrics(r.Context(), id, hc)
	if err != nil {
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	ts := time.Unix(m.Timestamp, 0).UTC()
	ns, _, _ := a.cfg.Manager.NetStats(team, id)
	writeJSON(w, http.StatusOK, []e2bapi.Metric{{Timestamp: ts, TimestampUnix: m.Timestamp, CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, MemCache: m.MemCache, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
		NetBytesIn: ns.BytesIn, NetBytesOut: ns.BytesOut, NetDenied: ns.Denied}})
}
