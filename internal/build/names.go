package build

import (
	"fmt"
	"strings"
)

// DefaultTag is the tag a name without one means.
const DefaultTag = "default"

// MaxNameLen bounds a template name as E2B does.
const MaxNameLen = 128

// Name is a parsed template name, [namespace/]alias[:tag], lower-cased.
type Name struct {
	Namespace, Alias, Tag string
}

// String is the name with its tag.
func (n Name) String() string { return n.Base() + ":" + n.Tag }

// Base is the name without its tag: what identifies the template.
func (n Name) Base() string {
	if n.Namespace != "" {
		return n.Namespace + "/" + n.Alias
	}
	return n.Alias
}

// ParseName reads [namespace/]alias[:tag]: alias and namespace of [a-z0-9-_], the tag of
// [a-z0-9-_.], "default" when absent. Upper case is folded, as E2B does.
func ParseName(s string) (Name, error) {
	if s == "" || len(s) > MaxNameLen {
		return Name{}, fmt.Errorf("name: want 1 to %d characters", MaxNameLen)
	}
	s = strings.ToLower(s)
	var n Name
	rest := s
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		n.Namespace, rest = rest[:i], rest[i+1:]
		if !nameChars(n.Namespace, false) {
			return Name{}, fmt.Errorf("name %q: the namespace must be of a-z, 0-9, '-' and '_'", s)
		}
	}
	n.Alias, n.Tag = rest, DefaultTag
	if i := strings.IndexByte(rest, ':'); i >= 0 {
		n.Alias, n.Tag = rest[:i], rest[i+1:]
		if !nameChars(n.Tag, true) {
			return Name{}, fmt.Errorf("name %q: the tag must be of a-z, 0-9, '-', '_' and '.'", s)
		}
	}
	if !nameChars(n.Alias, false) {
		return Name{}, fmt.Errorf("name %q: the alias must be of a-z, 0-9, '-' and '_'", s)
	}
	return n, nil
}

// ValidTag checks a tag alone.
func ValidTag(t string) error {
	if len(t) > MaxNameLen || !nameChars(strings.ToLower(t), true) {
		return fmt.Errorf("tag %q: must be 1 to %d of a-z, 0-9, '-', '_' and '.'", t, MaxNameLen)
	}
	return nil
}

func nameChars(s string, dot bool) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.' && dot:
		default:
			return false
		}
	}
	return true
}
