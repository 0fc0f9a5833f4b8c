package e2bapi

import (
	"encoding/json"
	"time"
)

// TemplateCreate is the body of POST /v3/templates.
type TemplateCreate struct {
	Name      string   `json:"name"`
	Alias     string   `json:"alias,omitempty"` // older SDKs
	Tags      []string `json:"tags,omitempty"`
	CPUCount  int      `json:"cpuCount,omitempty"`
	MemoryMB  int      `json:"memoryMB,omitempty"`
	TeamID    string   `json:"teamID,omitempty"`
	SkipCache bool     `json:"skipCache,omitempty"`
	// MinFreeDiskMB asks for that much free disk in the template's file system after its
	// steps (it grows, never shrinks).
	MinFreeDiskMB int `json:"minFreeDiskMb,omitempty"`
}

// TemplateCreated answers POST /v3/templates (202).
type TemplateCreated struct {
	TemplateID string   `json:"templateID"`
	BuildID    string   `json:"buildID"`
	Public     bool     `json:"public"`
	Names      []string `json:"names"`
	Tags       []string `json:"tags"`
	Aliases    []string `json:"aliases"`
}

// TemplateFiles answers GET /templates/{id}/files/{hash} (201).
type TemplateFiles struct {
	Present bool   `json:"present"`
	URL     string `json:"url,omitempty"`
}

// BuildLogEntry is one line of a build's log.
type BuildLogEntry struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
	Step      string    `json:"step,omitempty"`
}

// BuildReason says why a build failed.
type BuildReason struct {
	Message    string          `json:"message"`
	Step       string          `json:"step,omitempty"`
	LogEntries []BuildLogEntry `json:"logEntries,omitempty"`
}

// BuildStatus answers GET /templates/{id}/builds/{buildID}/status.
type BuildStatus struct {
	TemplateID string          `json:"templateID"`
	BuildID    string          `json:"buildID"`
	Status     string          `json:"status"`
	Logs       []string        `json:"logs"`
	LogEntries []BuildLogEntry `json:"logEntries"`
	Reason     *BuildReason    `json:"reason,omitempty"`
}

// BuildLogs answers GET /templates/{id}/builds/{buildID}/logs.
type BuildLogs struct {
	Logs []BuildLogEntry `json:"logs"`
}

// TemplateBuild is one build in a template's listing.
type TemplateBuild struct {
	BuildID    string     `json:"buildID"`
	Status     string     `json:"status"`
	CreatedAt  time.Time  `json:"createdAt"`
	UpdatedAt  time.Time  `json:"updatedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
	CPUCount   int        `json:"cpuCount"`
	MemoryMB   int        `json:"memoryMB"`
	DiskSizeMB int        `json:"diskSizeMB,omitempty"`
}

// Template is a template as GET /templates lists it.
type Template struct {
	TemplateID    string          `json:"templateID"`
	BuildID       string          `json:"buildID"`
	CPUCount      int             `json:"cpuCount"`
	MemoryMB      int             `json:"memoryMB"`
	DiskSizeMB    int             `json:"diskSizeMB"`
	Public        bool            `json:"public"`
	Aliases       []string        `json:"aliases"`
	Names         []string        `json:"names"`
	CreatedAt     time.Time       `json:"createdAt"`
	UpdatedAt     time.Time       `json:"updatedAt"`
	CreatedBy     *string         `json:"createdBy"`
	LastSpawnedAt *time.Time      `json:"lastSpawnedAt"`
	SpawnCount    int             `json:"spawnCount"`
	BuildCount    int             `json:"buildCount"`
	EnvdVersion   string          `json:"envdVersion"`
	BuildStatus   string          `json:"buildStatus"`
	Builds        []TemplateBuild `json:"builds,omitempty"`
}

// TagsAssign is the body of POST /templates/tags; TagsAssigned its answer (201).
type TagsAssign struct {
	Target string   `json:"target"`
	Tags   []string `json:"tags"`
}

// TagsAssigned answers POST /templates/tags.
type TagsAssigned struct {
	Tags    []string `json:"tags"`
	BuildID string   `json:"buildID"`
}

// TagsRemove is the body of DELETE /templates/tags.
type TagsRemove struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// TemplateTag is one tag of GET /templates/{id}/tags.
type TemplateTag struct {
	Tag       string    `json:"tag"`
	BuildID   string    `json:"buildID"`
	CreatedAt time.Time `json:"createdAt"`
}

// MaxLogEntriesPerCall is the most log entries one build status or logs call returns.
const MaxLogEntriesPerCall = 100

// BuildStep is one step of POST /v2/templates/{id}/builds/{buildID}.
type BuildStep struct {
	Type      string   `json:"type"`
	Args      []string `json:"args"`
	FilesHash string   `json:"filesHash,omitempty"`
	Force     bool     `json:"force,omitempty"`
	// The SDK's own COPY options, sent along; they change nothing on the server.
	ForceUpload     json.RawMessage `json:"forceUpload,omitempty"`
	ResolveSymlinks json.RawMessage `json:"resolveSymlinks,omitempty"`
	Gzip            json.RawMessage `json:"gzip,omitempty"`
}

// BuildStart is the body of POST /v2/templates/{id}/builds/{buildID}.
type BuildStart struct {
	FromImage         string          `json:"fromImage,omitempty"`
	FromTemplate      string          `json:"fromTemplate,omitempty"`
	FromImageRegistry json.RawMessage `json:"fromImageRegistry,omitempty"`
	Force             bool            `json:"force,omitempty"`
	Steps             []BuildStep     `json:"steps"`
	StartCmd          string          `json:"startCmd,omitempty"`
	ReadyCmd          string          `json:"readyCmd,omitempty"`
}
