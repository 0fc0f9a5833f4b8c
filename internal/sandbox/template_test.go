package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadTemplateRefusesOtherMachinesAndIncompleteOnes(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"mem", "state", "disk.qcow2"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"name":"base","fingerprint":"aaaa","memoryMiB":512,"cpus":2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTemplate(dir, "aaaa"); err != nil {
		t.Fatalf("matching template: %v", err)
	}
	if _, err := loadTemplate(dir, "bbbb"); err == nil || !strings.Contains(err.Error(), "another machine") {
		t.Fatalf("other machine's template loaded: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTemplate(dir, "aaaa"); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("incomplete template loaded: %v", err)
	}
}
