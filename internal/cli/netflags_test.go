package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNetFlags(t *testing.T) {
	hostsFile := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hostsFile, []byte("# test hosts\n10.200.0.2 a.test  b.test # two names\n\n10.200.0.3\tc.test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := netFlags{dnsHosts: []string{"D.Test.=10.200.0.4", "a.test=10.200.0.9"}, hostsFile: hostsFile, exempt: []string{"169.254.169.254", "10.0.0.0/8"}}
	hosts, exempt, err := f.parse()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a.test": "10.200.0.9", "b.test": "10.200.0.2", "c.test": "10.200.0.3", "d.test": "10.200.0.4"}
	if len(hosts) != len(want) {
		t.Fatalf("hosts %v", hosts)
	}
	for n, ip := range want {
		if hosts[n].String() != ip {
			t.Errorf("%s = %v, want %s (flags override the file)", n, hosts[n], ip)
		}
	}
	if len(exempt) != 2 || exempt[0].String() != "169.254.169.254/32" || exempt[1].String() != "10.0.0.0/8" {
		t.Fatalf("exempt %v", exempt)
	}
	for _, bad := range []netFlags{
		{dnsHosts: []string{"noequals"}},
		{dnsHosts: []string{"a.test=::1"}},
		{dnsHosts: []string{"a.test=300.1.1.1"}},
		{hostsFile: filepath.Join(t.TempDir(), "missing")},
		{exempt: []string{"nope"}},
	} {
		if _, _, err := bad.parse(); err == nil || !strings.Contains(err.Error(), "--") {
			t.Errorf("%+v: %v, want an error naming the flag", bad, err)
		}
	}
}
