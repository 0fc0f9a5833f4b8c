package e2e

import (
	"bytes"
	"context"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/internal/sandbox"
)

// TestTemplateClones restores 3 sandboxes from the base template's memory snapshot: each has its
// own host name, the host's clock, and random bytes (kernel and Python) that no sibling shares.
func TestTemplateClones(t *testing.T) {
	rd := runDir(t)
	rt := newRuntime(t, rd, nil)
	ctx := context.Background()
	tmpl, err := rt.EnsureTemplate(ctx, testEnv.home, "base")
	if err != nil {
		t.Fatal(err)
	}
	rt.SetTemplate("base", tmpl)
	seen := map[string]string{}
	for i := 0; i < 3; i++ {
		sb, err := rt.Boot(ctx, sandbox.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !sb.Restored {
			t.Fatal("the sandbox was booted, not restored")
		}
		var out bytes.Buffer
		res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/bash", Args: []string{"-c",
			`hostname; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; python3 -c 'import os; print(os.urandom(32).hex())'; date +%s.%N`}},
			nil, &out, io.Discard, nil)
		host := float64(time.Now().UnixNano()) / 1e9
		_ = sb.Close()
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("clone %d: %v %+v", i, err, res)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 4 {
			t.Fatalf("clone %d output %q", i, out.String())
		}
		if lines[0] != sb.ID {
			t.Errorf("clone %d: hostname %q, want %q", i, lines[0], sb.ID)
		}
		for _, r := range lines[1:3] {
			if len(r) != 64 {
				t.Fatalf("clone %d: random %q", i, r)
			}
			if other, dup := seen[r]; dup {
				t.Errorf("clone %d repeats random bytes of %s: %s", i, other, r)
			}
			seen[r] = sb.ID
		}
		guest, err := strconv.ParseFloat(lines[3], 64)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(host-guest) > 1 {
			t.Errorf("clone %d: guest clock %.3f is %.3f s off the host's", i, guest, guest-host)
		}
	}
	assertNothingLeft(t, rd)
}
