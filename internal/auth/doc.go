// Package auth owns API keys: their E2B-compatible form (e2b_ and hex), creation (only the
// SHA-256 hash is stored), revocation, and resolving a presented key to its team.
package auth
