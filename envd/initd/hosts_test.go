package initd

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSetHostsName(t *testing.T) {
	cases := map[string]struct{ in, want string }{
		"debian's":          {"127.0.0.1 localhost\n127.0.1.1 sandbox\n", "127.0.0.1 localhost\n127.0.1.1\tabc\n"},
		"user lines kept":   {"127.0.0.1 localhost\n10.0.0.1 db\n127.0.1.1\told\n::1 ip6\n", "127.0.0.1 localhost\n10.0.0.1 db\n127.0.1.1\tabc\n::1 ip6\n"},
		"none yet":          {"127.0.0.1 localhost", "127.0.0.1 localhost\n127.0.1.1\tabc\n"},
		"duplicates folded": {"127.0.1.1 a\n127.0.1.1 b\n", "127.0.1.1\tabc\n"},
		"missing file":      {"", "127.0.1.1\tabc\n"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "hosts")
			if c.in != "" {
				if err := os.WriteFile(p, []byte(c.in), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := setHostsName(p, "abc"); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(p)
			if string(got) != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
			st1, _ := os.Stat(p)
			if err := setHostsName(p, "abc"); err != nil { // unchanged: not rewritten
				t.Fatal(err)
			}
			st2, _ := os.Stat(p)
			if !os.SameFile(st1, st2) {
				t.Fatal("an unchanged hosts file was rewritten")
			}
			if left, _ := filepath.Glob(p + ".*"); len(left) != 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
}
