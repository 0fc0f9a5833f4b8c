// Package api owns `cell serve`'s HTTP surface: E2B's REST control plane (routes, JSON shapes,
// error bodies, X-API-KEY auth by team), the proxy that carries SDK traffic to a sandbox's envd
// (routed by the E2b-Sandbox-Id/E2b-Sandbox-Port headers or by a {port}-{id}.{domain} Host), and
// the OpenAPI document at /openapi.yaml.
package api
