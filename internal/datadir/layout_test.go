package datadir

import (
	"path/filepath"
	"strings"
	"testing"
)

// Every path of the layout is its own and inside the data directory; the lock is the one Acquire
// takes.
func TestLayoutPaths(t *testing.T) {
	home := t.TempDir()
	l := Layout{Home: home}
	fp := "0123456789abcdef0123456789abcdef"
	paths := map[string]string{
		"lock": l.Lock(), "db": l.DB(), "accel": l.Accel(), "images": l.Images(), "run": l.Run(),
		"paused": l.Paused(), "paused sandbox": l.PausedSandbox("sb1"), "templates": l.Templates(),
		"template": l.Template("base"), "build": l.TemplateBuild("base", fp), "template lock": l.TemplateLock("base"),
		"snapshot": l.Snapshot("snap1"),
	}
	seen := map[string]string{}
	for what, p := range paths {
		if !strings.HasPrefix(p, home+string(filepath.Separator)) {
			t.Errorf("%s: %s is not inside %s", what, p, home)
		}
		if other, ok := seen[p]; ok {
			t.Errorf("%s and %s are both %s", what, other, p)
		}
		seen[p] = what
	}
	if l.Lock() != filepath.Join(home, LockFile) {
		t.Errorf("Lock() = %s, not the file Acquire locks", l.Lock())
	}
	if filepath.Base(l.TemplateBuild("base", fp)) != fp[:16] {
		t.Errorf("a build is named by its fingerprint's first 16 characters: %s", l.TemplateBuild("base", fp))
	}
}
