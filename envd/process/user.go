package process

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"
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

// KeepAliveHeader is the header in which E2B's SDKs ask for keepalive events (seconds).
const KeepAliveHeader = "Keepalive-Ping-Interval"

// KeepAlive returns the keepalive interval a request asks for, within sane bounds, or
// KeepAliveInterval.
func KeepAlive(h interface{ Get(string) string }) time.Duration {
	n, err := strconv.Atoi(h.Get(KeepAliveHeader))
	if err != nil || n <= 0 {
		return KeepAliveInterval
	}
	return time.Duration(min(max(n, 1), 3600)) * time.Second
}
