package envd

import (
	"os/exec"
	"strings"
	"testing"
)

// The host binary links no guest package: what host and guest share is this package.
func TestHostLinksNoGuestPackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/cellhq/cell/cmd/cell").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list named %d packages: %q", len(deps), out)
	}
	for _, p := range deps {
		if strings.HasPrefix(p, "github.com/cellhq/cell/envd/") || p == "github.com/cellhq/cell/envd" || strings.Contains(p, "fsnotify") {
			t.Errorf("cmd/cell links the guest's %s", p)
		}
	}
}

func TestSign(t *testing.T) {
	a := Sign("/home/user/a.txt", "read", "user", "tok", 0)
	if !strings.HasPrefix(a, "v1_") || strings.HasSuffix(a, "=") || len(a) != 3+43 {
		t.Fatalf("signature %q", a)
	}
	if a == Sign("/home/user/a.txt", "write", "user", "tok", 0) || a == Sign("/home/user/a.txt", "read", "user", "tok", 1) {
		t.Fatal("the operation or the expiration does not change the signature")
	}
}

// The contract is standard library only: both sides can link it without linking each other's
// dependencies (running a command, which needs connect-go, is package command's).
func TestContractIsStandardLibraryOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/cellhq/cell/pkg/envd").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if deps := strings.Fields(string(out)); len(deps) != 1 || deps[0] != "github.com/cellhq/cell/pkg/envd" {
		t.Fatalf("pkg/envd links %q", deps)
	}
}
