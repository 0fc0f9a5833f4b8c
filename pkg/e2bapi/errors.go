package e2bapi

// Error is the REST API's error answer.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// SandboxError is the proxy's answer when a sandbox cannot be reached (E2B's edge's shape).
type SandboxError struct {
	SandboxID string `json:"sandboxId"`
	Message   string `json:"message"`
	Code      int    `json:"code"`
}

// PortError is the proxy's answer for a sandbox port nothing listens on.
type PortError struct {
	SandboxID string `json:"sandboxId"`
	Message   string `json:"message"`
	Port      int    `json:"port"`
	Code      int    `json:"code"`
}
