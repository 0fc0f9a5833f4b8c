package ids

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := []string{"base", "a", "my-template_2", "0abc", strings.Repeat("a", MaxLen)}
	for _, s := range good {
		if err := Validate("template", s); err != nil {
			t.Errorf("Validate(%q) = %v, want nil", s, err)
		}
	}
	bad := []string{"", ".", "..", "../etc", "a/b", "A", "-lead", "_lead", "sp ace", "a\x00b",
		"é", strings.Repeat("a", MaxLen+1), "a.b", "a\nb"}
	for _, s := range bad {
		err := Validate("template", s)
		if err == nil {
			t.Errorf("Validate(%q) = nil, want an error", s)
			continue
		}
		if !strings.HasPrefix(err.Error(), "template") {
			t.Errorf("Validate(%q) error %q does not name the field", s, err)
		}
	}
}

func TestNewSandboxID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewSandboxID()
		if len(id) != 20 || strings.ContainsAny(id, "-_") {
			t.Fatalf("bad id %q", id)
		}
		if err := Validate("sandbox id", id); err != nil {
			t.Fatalf("generated id %q invalid: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}
