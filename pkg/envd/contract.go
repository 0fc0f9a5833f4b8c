package envd

import (
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// Version is envd's version as reported to clients. E2B's SDKs enable features by it: 0.6.4 is
// the newest feature level Cell implements (octet-stream uploads, file metadata, watch entries).
const Version = "0.6.4"

// Cell's own paths, beside E2B's API.
const (
	// PowerOffPath asks envd to power the guest off.
	PowerOffPath = "/cell/poweroff"
	// SyncPath asks envd to flush the guest's file systems (sync(2)) and answers when they are:
	// a pause needs it, and it saves starting /bin/sync in the guest.
	SyncPath = "/cell/sync"
	// LocalTCPPath opens a byte stream to a TCP port on the guest's loopback (?port=N), upgraded
	// with LocalTCPProtocol: the proxy reaches servers bound to localhost only through it.
	LocalTCPPath = "/cell/tcp"
	// LocalTCPProtocol is the Upgrade token of LocalTCPPath.
	LocalTCPProtocol = "cell-tcp"
)

// AccessTokenHeader carries envd's access token.
const AccessTokenHeader = "X-Access-Token"

// LifetimeTrailer is the trailer of a process stream (Start, Connect) in which envd reports how
// long the process ran, in microseconds, from fork to reaping.
const LifetimeTrailer = "Cell-Process-Lifetime-Us"

// MetadataHeaderPrefix marks /files upload headers that become a file's metadata (user.* xattrs).
const MetadataHeaderPrefix = "X-Metadata-"

// InitRequest is the body of POST /init, and the init a new sandbox's channel handshake carries
// (E2B's field names, and Cell's own where marked).
type InitRequest struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    *string           `json:"accessToken,omitempty"`
	Timestamp      *time.Time        `json:"timestamp,omitempty"`
	DefaultUser    *string           `json:"defaultUser,omitempty"`
	DefaultWorkdir *string           `json:"defaultWorkdir,omitempty"`
	HyperloopIP    string            `json:"hyperloopIP,omitempty"`
	// Cell's own: the sandbox's host name. (Host randomness for the kernel's generator comes
	// with every channel handshake instead.)
	Hostname *string `json:"hostname,omitempty"`
	// Cell's own: the sandbox's and its template's ids, which commands see as E2B's
	// E2B_SANDBOX_ID and E2B_TEMPLATE_ID (E2B's envd reads them from Firecracker's metadata
	// service).
	SandboxID  *string `json:"sandboxID,omitempty"`
	TemplateID *string `json:"templateID,omitempty"`
}

// MetricsReport is GET /metrics (E2B's field names).
type MetricsReport struct {
	Timestamp  int64   `json:"ts"`
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"`
	MemCache   uint64  `json:"mem_cache"`
	DiskUsed   uint64  `json:"disk_used"`
	DiskTotal  uint64  `json:"disk_total"`
}

// Sign returns the signature E2B's SDKs put on a /files URL: "v1_" and the unpadded standard
// base64 of SHA-256 over "path:operation:user:token[:expiration]".
func Sign(path, operation, user, token string, expiration int64) string {
	raw := path + ":" + operation + ":" + user + ":" + token
	if expiration != 0 {
		raw += ":" + strconv.FormatInt(expiration, 10)
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
}
