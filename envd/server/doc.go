// Package server owns envd's HTTP surface: the Connect services, /health and Cell's power-off
// endpoint, served on every session the host opens over the channel.
package server
