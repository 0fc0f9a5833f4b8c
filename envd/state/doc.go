// Package state owns envd's per-sandbox settings that the host hands over with an init (in the
// channel's handshake, or POST /init): the default user and working directory, the environment
// every command gets, and the access token that guards envd's API. Every envd service reads them
// from one Defaults value.
package state
