package e2bapi

// Health is GET /health (Cell's own).
type Health struct {
	// Pools are the daemon's pools of ready sandboxes, by template.
	Pools  map[string]Pool `json:"pools"`
	Status string          `json:"status"`
}

// Pool is one pool of ready sandboxes.
type Pool struct {
	Ready int `json:"ready"`
	Size  int `json:"size"`
}
