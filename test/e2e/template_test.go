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

	"github.com/cellhq/cell/internal/bench"
	"github.com/cellhq/cell/internal/sandbox"
)

// templateRuntime is an in-process runtime (VMs in a run directory of the test's own) whose
// sandboxes restore from the base template.
func templateRuntime(t *testing.T) (*sandbox.Runtime, *sandbox.Template, string) {
	t.Helper()
	rd := runDir(t)
	rt := newRuntime(t, rd, nil)
	tmpl, err := rt.EnsureTemplate(context.Background(), testEnv.home, "base")
	if err != nil {
		t.Fatal(err)
	}
	rt.SetTemplate("base", tmpl)
	return rt, tmpl, rd
}

// TestTemplateClones restores 3 sandboxes from the base template's memory snapshot: each has its
// own host name, the host's clock, and random bytes (kernel and Python) that no sibling shares.
func TestTemplateClones(t *testing.T) {
	rt, _, rd := templateRuntime(t)
	ctx := context.Background()
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
		t0 := time.Now()
		res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/bash", Args: []string{"-c",
			`sleep 0.2; hostname; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; python3 -c 'import os; print(os.urandom(32).hex())'; date +%s.%N`}},
			nil, &out, io.Discard, nil)
		took := time.Since(t0)
		host := float64(time.Now().UnixNano()) / 1e9
		_ = sb.Close()
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("clone %d: %v %+v", i, err, res)
		}
		// envd's own measure of the command (fork to reaping) comes with the result.
		if res.Lifetime < 200*time.Millisecond || res.Lifetime > took {
			t.Errorf("clone %d: lifetime %v, round trip %v", i, res.Lifetime, took)
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

// TestDensityClonesShareTemplate holds 50 idle clones of the base template: they share the
// template's RAM (total PSS far below 50 × RAM) and each costs at most 40 MiB of PSS.
func TestDensityClonesShareTemplate(t *testing.T) {
	rt, tmpl, rd := templateRuntime(t)
	ctx := context.Background()
	const n = 50
	avail := bench.MemAvailableMiB()
	var boxes []*sandbox.Sandbox
	defer func() {
		for _, sb := range boxes {
			_ = sb.Close()
		}
		assertNothingLeft(t, rd)
	}()
	for i := 0; i < n; i++ {
		sb, err := rt.Boot(ctx, sandbox.Options{})
		if err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		boxes = append(boxes, sb)
	}
	time.Sleep(2 * time.Second) // idle
	var pss []float64
	total := 0.0
	for _, sb := range boxes {
		p := bench.PSSMiB(sb.VM.PID)
		if p == 0 {
			t.Fatalf("no PSS for QEMU %d", sb.VM.PID)
		}
		pss = append(pss, p)
		total += p
	}
	med := bench.MedianFloat(pss)
	used := avail - bench.MemAvailableMiB()
	t.Logf("%d idle clones of %d MiB: PSS median %.1f MiB, total %.0f MiB; host memory used %.0f MiB", n, tmpl.MemoryMiB, med, total, used)
	if limit := float64(n*tmpl.MemoryMiB) / 8; total > limit {
		t.Errorf("total PSS %.0f MiB: the clones do not share the template's pages (limit %.0f)", total, limit)
	}
	if med > 40 {
		t.Errorf("PSS per idle clone %.1f MiB, want ≤ 40", med)
	}
	// They all still answer.
	for i, sb := range boxes {
		if res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/true"}, nil, io.Discard, io.Discard, nil); err != nil || res.ExitCode != 0 {
			t.Fatalf("clone %d: %v %+v", i, err, res)
		}
	}
}
