package e2bapi

// TimeoutRequest is the body of POST /sandboxes/{id}/timeout (seconds from now).
type TimeoutRequest struct {
	Timeout *int `json:"timeout"`
}

// RefreshRequest is the body of POST /sandboxes/{id}/refreshes (seconds from now).
type RefreshRequest struct {
	Duration *int `json:"duration"`
}

// ConnectRequest is the body of POST /sandboxes/{id}/connect and of the deprecated
// POST /sandboxes/{id}/resume.
type ConnectRequest struct {
	Timeout *int `json:"timeout,omitempty"`
	// Memory false resumes a paused sandbox from its disk alone (the SDK's onResume: 'reboot').
	Memory *bool `json:"memory,omitempty"`
	// AutoPause is the deprecated resume route's field; Cell keeps the sandbox's own setting.
	AutoPause *bool `json:"autoPause,omitempty"`
}

// PauseRequest is the body of POST /sandboxes/{id}/pause.
type PauseRequest struct {
	// Memory false saves the disk alone.
	Memory *bool `json:"memory,omitempty"`
}

// SnapshotRequest is the body of POST /sandboxes/{id}/snapshots.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"`
}

// Snapshot is a snapshot of a sandbox: a template others can be created from.
type Snapshot struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

// TemplateAlias is the answer to GET /templates/aliases/{alias}.
type TemplateAlias struct {
	TemplateID string `json:"templateID"`
	Public     bool   `json:"public"`
}

// ForkRequest is the body of POST /sandboxes/{id}/fork (Cell's own route).
type ForkRequest struct {
	Count   *int `json:"count"`
	Timeout *int `json:"timeout,omitempty"`
}

// ForkResult is one fork: its sandbox, or why it failed.
type ForkResult struct {
	Sandbox *Sandbox `json:"sandbox,omitempty"`
	Error   *Error   `json:"error,omitempty"`
}
