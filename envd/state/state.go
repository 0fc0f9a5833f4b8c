package state

import (
	"crypto/subtle"
	"maps"
	"sync"
)

// Defaults is the shared, mutable envd configuration. The zero value is not usable; use New.
type Defaults struct {
	mu      sync.RWMutex
	user    string
	workdir string
	envs    map[string]string
	token   string
	// E2B's own variables for the sandbox's commands; they win over the user's.
	sandboxID, templateID string
}

// New returns Defaults whose default user is user.
func New(user string) *Defaults {
	return &Defaults{user: user, envs: map[string]string{}}
}

// User is the user commands and file operations run as when a request names none.
func (d *Defaults) User() string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.user
}

// Workdir is the working directory commands start in when a request names none ("" = home).
func (d *Defaults) Workdir() string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.workdir
}

// Envs returns a copy of the environment every command gets: the variables /init set, then
// E2B's, as E2B's envd sets them: E2B_SANDBOX=true, E2B_SANDBOX_ID and E2B_TEMPLATE_ID.
func (d *Defaults) Envs() map[string]string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	env := make(map[string]string, len(d.envs)+3)
	maps.Copy(env, d.envs)
	env["E2B_SANDBOX"] = "true"
	if d.sandboxID != "" {
		env["E2B_SANDBOX_ID"] = d.sandboxID
	}
	if d.templateID != "" {
		env["E2B_TEMPLATE_ID"] = d.templateID
	}
	return env
}

// Token is the access token ("" when envd is open).
func (d *Defaults) Token() string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.token
}

// CheckToken reports whether got is the access token (always true when none is set).
func (d *Defaults) CheckToken(got string) bool {
	want := d.Token()
	return want == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// Update is what /init may change; nil fields are left alone.
type Update struct {
	User    *string
	Workdir *string
	Envs    map[string]string
	Token   *string
	// The sandbox's and its template's ids (E2B_SANDBOX_ID, E2B_TEMPLATE_ID).
	SandboxID, TemplateID *string
}

// Apply applies u. Env vars are merged into the existing ones.
func (d *Defaults) Apply(u Update) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u.User != nil && *u.User != "" {
		d.user = *u.User
	}
	if u.Workdir != nil {
		d.workdir = *u.Workdir
	}
	maps.Copy(d.envs, u.Envs)
	if u.Token != nil {
		d.token = *u.Token
	}
	if u.SandboxID != nil {
		d.sandboxID = *u.SandboxID
	}
	if u.TemplateID != nil {
		d.templateID = *u.TemplateID
	}
}
