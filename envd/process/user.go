package process

import (
	"encoding/base64"
	"strings"
)

// UserFromHeader returns the user name E2B's SDKs send as the Basic auth user ("" if none).
func UserFromHeader(h interface{ Get(string) string }) string {
	auth := h.Get("Authorization")
	const prefix = "Basic "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(auth[len(prefix):]))
	if err != nil {
		return ""
	}
	name, _, _ := strings.Cut(string(raw), ":")
	return name
}
