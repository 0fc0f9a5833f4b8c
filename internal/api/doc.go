// Package api owns `cell serve`'s HTTP surface: E2B's REST control plane (X-API-KEY auth by
// team, the routes in api.go and their handlers one file per resource: sandboxes.go, lifecycle.go
// for timeouts, connect, pause and resume, snapshots.go with forks, templates.go, network.go,
// logs.go; errors.go and decode.go for error answers and request bodies), the proxy that carries
// SDK traffic to a sandbox's envd (routed by the E2b-Sandbox-Id/E2b-Sandbox-Port headers or by a
// {port}-{id}.{domain} Host), the daemon's Prometheus metrics and the OpenAPI document at
// /openapi.yaml. The JSON shapes are package e2bapi's, shared with Cell's Go client; the
// handlers map the manager's records to them field by field.
package api
