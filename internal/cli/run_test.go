package cli

import (
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	env, err := parseEnv([]string{"A=1", "B=x=y", "EMPTY="})
	if err != nil {
		t.Fatal(err)
	}
	if env["A"] != "1" || env["B"] != "x=y" || env["EMPTY"] != "" || len(env) != 3 {
		t.Fatalf("env = %v", env)
	}
	for _, bad := range []string{"NOEQUALS", "=value", "A\x00B=1"} {
		if _, err := parseEnv([]string{bad}); err == nil || !strings.Contains(err.Error(), "--env") {
			t.Errorf("parseEnv(%q) = %v, want an error naming --env", bad, err)
		}
	}
}
