// Package store owns Cell's durable state in one SQLite database (pure Go driver): teams, API
// keys (hashes only) and sandbox records, so that a restarted `cell serve` knows every sandbox it
// had and can re-adopt or clean up each one.
package store
