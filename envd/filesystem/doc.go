// Package filesystem owns envd's view of the guest filesystem: E2B's filesystem.Filesystem
// Connect service (stat, list, make, move, remove, streaming and polled watches) and the plain
// HTTP /files endpoint (downloads and uploads, signed URLs, gzip, metadata as xattrs). Paths are
// resolved for the requesting user (relative to their home) and what it creates belongs to them.
package filesystem
