// Package cli owns the `cell` command line: it parses flags (cobra), wires the image builder, the
// VM host and the sandbox runtime together, and maps outcomes to exit codes.
package cli
