// Package client is Cell's Go client: the REST control plane of `cell serve` (create, list,
// get, kill, timeouts) and, through its proxy, each sandbox's envd (commands, PTYs, files). It
// speaks the same E2B-compatible wire protocol as E2B's SDKs.
package client
