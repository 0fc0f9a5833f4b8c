package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzLinkInside: whatever links a sandbox chooses at three depths of a copy (t/l1, t/a/l2,
// t/a/b/l3, next to a directory t/a/b/c), those linkInside accepts, made on a real file system,
// resolve (through one another too) inside t; and none with an absolute target is accepted.
func FuzzLinkInside(f *testing.F) {
	for _, seed := range [][3]string{
		{"a/b/c", "..", "../../l1"},
		{"l2/..", ".", "../l2/.."},
		{"x", "..", "../l2/.."}, // through l2 (t), ".." is outside
		{"a/l2/../..", "b/l3", "c/../.."},
		{"/etc", "../../..", "../../../outside"},
		{".", "./b/./c//", "../../a/b/l3"},
		{"a//b/../../..", "../l1/..", ".."},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, t1, t2, t3 string) {
		base := t.TempDir()
		top := filepath.Join(base, "t")
		if err := os.MkdirAll(filepath.Join(top, "a", "b", "c"), 0o755); err != nil {
			t.Fatal(err)
		}
		links := []struct {
			rel    []string
			target string
		}{{[]string{"t", "l1"}, t1}, {[]string{"t", "a", "l2"}, t2}, {[]string{"t", "a", "b", "l3"}, t3}}
		var made []string
		for _, l := range links {
			if !linkInside(l.rel, l.target) {
				continue
			}
			if strings.HasPrefix(l.target, "/") {
				t.Fatalf("%q accepted at %q", l.target, l.rel)
			}
			if strings.ContainsRune(l.target, 0) {
				continue // no link can have it
			}
			p := filepath.Join(append([]string{base}, l.rel...)...)
			if err := os.Symlink(l.target, p); err != nil {
				t.Fatal(err)
			}
			made = append(made, p)
		}
		realTop, err := filepath.EvalSymlinks(top)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range made {
			for _, q := range []string{p, filepath.Join(p, "c"), filepath.Join(p, "l2"), filepath.Join(p, "b", "l3")} {
				got, err := filepath.EvalSymlinks(q)
				if err != nil {
					continue // dangling, a loop or not a directory: nothing to write through
				}
				if got != realTop && !strings.HasPrefix(got, realTop+"/") {
					t.Fatalf("links %q, %q, %q: %s resolves to %s, outside %s", t1, t2, t3, q, got, realTop)
				}
			}
		}
	})
}

// FuzzPrintableName: what printableName makes of any text is valid UTF-8 without control
// characters (newlines and tabs included) or bidirectional controls, at most 6 bytes for each
// byte in, and unchanged when there was nothing to escape.
func FuzzPrintableName(f *testing.F) {
	for _, s := range []string{"plain", "a\nb\tc\rd", "\x1b]0;title\x07", "\u202e\u009b", "\xff\xfe", "日本\u200f", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := printableName(s)
		if !utf8.ValidString(out) {
			t.Fatalf("printableName(%q) = %q: not UTF-8", s, out)
		}
		clean := utf8.ValidString(s)
		for _, r := range s {
			if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
				clean = false
			}
		}
		for _, r := range out {
			if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
				t.Fatalf("printableName(%q) = %q: has %U", s, out, r)
			}
		}
		if clean && out != s {
			t.Fatalf("printableName(%q) = %q: changed clean text", s, out)
		}
		if len(out) > 6*len(s) {
			t.Fatalf("printableName(%q) = %q: %d bytes for %d", s, out, len(out), len(s))
		}
		// printable over it (as every message gets) changes nothing more.
		if again := printable(out); again != out {
			t.Fatalf("printable(%q) = %q", out, again)
		}
	})
}
