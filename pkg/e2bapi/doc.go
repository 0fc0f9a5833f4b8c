// Package e2bapi declares the JSON shapes of Cell's REST API and of its proxy's answers: E2B's
// field names, with Cell's own additions marked. `cell serve` (internal/api) answers in them and
// Cell's Go client (pkg/client) reads them, so the two cannot drift apart. Types only: what a
// field means to Cell, and which values are refused, is the server's.
package e2bapi
