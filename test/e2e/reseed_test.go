package e2e

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/pkg/envd"
)

// TestResumeReseeds resumes one paused state twice (a copy of its directory), as a crash that
// loses the first resume's VM can: the two must not produce the same random bytes, from the kernel
// (/dev/urandom) or from Python, so the resume reseeds the guest's RNG before a command runs.
func TestResumeReseeds(t *testing.T) {
	rt, _, rd := templateRuntime(t)
	ctx := context.Background()
	// One vCPU: with two, which CPU's generator each fork and exec draws from varies between
	// runs, and that alone can make the two resumes differ.
	sb, err := rt.Boot(ctx, sandbox.Options{CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Key the kernel's CRNG afresh just before the pause (RNDRESEEDCRNG): left alone, the kernel would not key it again for at least a second of guest time,
	// so without a reseed both resumes would produce the same bytes.
	if res, err := sb.Run(ctx, sandbox.RunSpec{User: "root", Cmd: "/bin/bash", Args: []string{"-c",
		`python3 -c 'import fcntl, os; fcntl.ioctl(os.open("/dev/urandom", os.O_WRONLY), 0x5207)' &&
		head -c 32 /dev/urandom >/dev/null`}}, nil, io.Discard, os.Stderr, nil); err != nil || res.ExitCode != 0 {
		t.Fatalf("reading random bytes: %v %+v", err, res)
	}
	base := t.TempDir()
	first, second := filepath.Join(base, "a"), filepath.Join(base, "b")
	if _, err := sb.Pause(ctx, first, true); err != nil {
		_ = sb.Close()
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "--sparse=always", first, second).CombinedOutput(); err != nil {
		t.Fatalf("copying the paused sandbox: %v %s", err, out)
	}
	var got []string
	for _, dir := range []string{first, second} {
		sb, err := rt.Resume(ctx, dir, envd.InitRequest{}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/bash", Args: []string{"-c",
			`head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; python3 -c 'import os; print(os.urandom(32).hex())'`}},
			nil, &out, io.Discard, nil)
		_ = sb.Close()
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("resume of %s: %v %+v", dir, err, res)
		}
		lines := strings.Fields(out.String())
		if len(lines) != 2 || len(lines[0]) != 64 || len(lines[1]) != 64 {
			t.Fatalf("resume of %s: output %q", dir, out.String())
		}
		got = append(got, lines...)
	}
	if got[0] == got[2] {
		t.Errorf("both resumes read %s from /dev/urandom", got[0])
	}
	if got[1] == got[3] {
		t.Errorf("both resumes got %s from os.urandom", got[1])
	}
	assertNothingLeft(t, rd)
}
