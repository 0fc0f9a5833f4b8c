package e2bapi

import (
	"encoding/json"
	"time"
)

// NewSandbox is the body of POST /sandboxes (fields Cell does not support yet are refused).
type NewSandbox struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout,omitempty"`
	Metadata            map[string]string `json:"metadata,omitempty"`
	EnvVars             map[string]string `json:"envVars,omitempty"`
	Secure              *bool             `json:"secure,omitempty"`
	AllowInternetAccess *bool             `json:"allow_internet_access,omitempty"`
	AutoPause           *bool             `json:"autoPause,omitempty"`
	AutoPauseMemory     *bool             `json:"autoPauseMemory,omitempty"`
	AutoResume          json.RawMessage   `json:"autoResume,omitempty"`
	Network             *NetworkConfig    `json:"network,omitempty"`
	MCP                 json.RawMessage   `json:"mcp,omitempty"`
	IAM                 json.RawMessage   `json:"iam,omitempty"`
	VolumeMounts        json.RawMessage   `json:"volumeMounts,omitempty"`
	// DiskSizeMB is Cell's own: the sandbox's disk in MiB (E2B sets it per template). It bounds
	// what the sandbox can write on the host; omitted: the daemon's default.
	DiskSizeMB *int `json:"diskSizeMB,omitempty"`
}

// Sandbox is what create, connect and resume answer.
type Sandbox struct {
	TemplateID         string  `json:"templateID"`
	SandboxID          string  `json:"sandboxID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    *string `json:"envdAccessToken,omitempty"`
	TrafficAccessToken *string `json:"trafficAccessToken,omitempty"`
	Domain             *string `json:"domain"`
}

// SandboxDetail is GET /sandboxes/{id} and an item of the lists.
type SandboxDetail struct {
	TemplateID          string            `json:"templateID"`
	Alias               string            `json:"alias,omitempty"`
	SandboxID           string            `json:"sandboxID"`
	ClientID            string            `json:"clientID"`
	StartedAt           time.Time         `json:"startedAt"`
	EndAt               time.Time         `json:"endAt"`
	EnvdVersion         string            `json:"envdVersion"`
	EnvdAccessToken     *string           `json:"envdAccessToken,omitempty"`
	Domain              *string           `json:"domain"`
	CPUCount            int               `json:"cpuCount"`
	MemoryMB            int               `json:"memoryMB"`
	DiskSizeMB          int               `json:"diskSizeMB"`
	Metadata            map[string]string `json:"metadata"`
	State               string            `json:"state"`
	AllowInternetAccess bool              `json:"allowInternetAccess"`
	Network             NetworkConfig     `json:"network"`
	VolumeMounts        []any             `json:"volumeMounts"`
}

// NetworkConfig is a sandbox's network (create body and details).
type NetworkConfig struct {
	AllowOut           []string `json:"allowOut,omitempty"`
	DenyOut            []string `json:"denyOut,omitempty"`
	AllowPublicTraffic *bool    `json:"allowPublicTraffic,omitempty"`
	MaskRequestHost    *string  `json:"maskRequestHost,omitempty"`
	// Not supported by Cell: refused with 501 when set.
	Rules       json.RawMessage `json:"rules,omitempty"`
	EgressProxy json.RawMessage `json:"egressProxy,omitempty"`
	HTTPSPorts  json.RawMessage `json:"httpsPorts,omitempty"`
}

// NetworkUpdate is the body of PUT /sandboxes/{id}/network. The SDK sends the internet switch
// as allow_internet_access; allowInternetAccess is accepted too.
type NetworkUpdate struct {
	AllowOut            *[]string `json:"allowOut,omitempty"`
	DenyOut             *[]string `json:"denyOut,omitempty"`
	AllowInternetAccess *bool     `json:"allowInternetAccess,omitempty"`
	AllowInternetSnake  *bool     `json:"allow_internet_access,omitempty"`
	Rules               any       `json:"rules,omitempty"`
	EgressProxy         any       `json:"egressProxy,omitempty"`
}

// Metric is one sample of GET /sandboxes/{id}/metrics.
type Metric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       uint64    `json:"memUsed"`
	MemTotal      uint64    `json:"memTotal"`
	MemCache      uint64    `json:"memCache"`
	DiskUsed      uint64    `json:"diskUsed"`
	DiskTotal     uint64    `json:"diskTotal"`
	// Cell's additions: the sandbox's network counters since it (last) started.
	NetBytesIn  uint64 `json:"netBytesIn"`
	NetBytesOut uint64 `json:"netBytesOut"`
	NetDenied   uint64 `json:"netDeniedConnections"`
}

// LogLine is an entry of the logs array of GET /sandboxes/{id}/logs.
type LogLine struct {
	Timestamp time.Time `json:"timestamp"`
	Line      string    `json:"line"`
}

// LogEntry is an entry of the logEntries array of GET /sandboxes/{id}/logs.
type LogEntry struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
	Fields    LogFields `json:"fields"`
}

// LogFields are a LogEntry's fields.
type LogFields struct {
	Source string `json:"source"`
}
