package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellhq/cell/pkg/client"
)

// writeContext makes a build context: a Dockerfile and the files it copies.
func writeContext(t *testing.T, dockerfile string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	files["Dockerfile"] = dockerfile
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// cellIn runs the cell binary over the data directory home (the image from the test cache).
func cellIn(t *testing.T, home string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testEnv.cell, args...)
	cmd.Env = serveEnv(home)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String(), took: time.Since(t0)}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return res
}

const testDockerfile = `# escape=\
FROM e2bdev/base
ARG GREETING=hello
COPY app/ /srv/app/
WORKDIR /srv/app
ENV MODE=prod \
    ROOT=$GREETING-root LIT='$HOME'
RUN echo "$GREETING from $(whoami)" > greeting.txt && \
    cat data/x.txt >> greeting.txt
EXPOSE 8000
`

// TestTemplateBuildDockerfile: `cell template build` with no cell serve builds a Dockerfile in
// process, `cell run --template` starts from it, and a second build is all cache hits.
func TestTemplateBuildDockerfile(t *testing.T) {
	home := t.TempDir()
	dir := writeContext(t, testDockerfile, map[string]string{"app/data/x.txt": "data file\n", "app/.hidden": "h\n"})
	res := cellIn(t, home, "template", "build", "--name", "df-app:v1", "--build-arg", "GREETING=howdy", dir)
	if res.code != 0 {
		t.Fatalf("build: %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "EXPOSE") || !strings.Contains(res.stderr, "warning") {
		t.Errorf("no warning about EXPOSE:\n%s", res.stderr)
	}
	first := res.took
	run := cellIn(t, home, "run", "--template", "df-app:v1", "--", "bash", "-c", `cat greeting.txt; pwd; echo "$MODE|$ROOT|$LIT"; whoami; ls -A; stat -c %U greeting.txt`)
	if run.code != 0 {
		t.Fatalf("run: %d\n%s%s", run.code, run.stdout, run.stderr)
	}
	want := "howdy from root\ndata file\n/srv/app\nprod|howdy-root|$HOME\nuser\n.hidden\ndata\ngreeting.txt\nroot\n"
	if run.stdout != want {
		t.Fatalf("in the template:\n%s\nwant:\n%s", run.stdout, want)
	}
	again := cellIn(t, home, "template", "build", "--name", "df-app:v1", "--build-arg", "GREETING=howdy", dir)
	if again.code != 0 {
		t.Fatalf("rebuild: %d\n%s", again.code, again.stderr)
	}
	// USER root, WORKDIR /, COPY, WORKDIR, ENV, RUN, USER user, and finalize.
	if n := strings.Count(again.stderr, "CACHED"); n != 8 {
		t.Fatalf("%d steps cached, want 8:\n%s", n, again.stderr)
	}
	t.Logf("first build %v, cached rebuild %v (in process, with the daemon's start)", first.Round(time.Millisecond), again.took.Round(time.Millisecond))
	// A changed file is a new upload: its COPY and what follows are built again.
	if err := os.WriteFile(filepath.Join(dir, "app/data/x.txt"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	changed := cellIn(t, home, "template", "build", "--name", "df-app:v2", "--build-arg", "GREETING=howdy", dir)
	if changed.code != 0 || strings.Count(changed.stderr, "CACHED") != 2 {
		t.Fatalf("after a change: %d\n%s", changed.code, changed.stderr)
	}
	out := cellIn(t, home, "run", "--template", "df-app:v2", "--", "cat", "greeting.txt")
	if out.stdout != "howdy from root\nchanged\n" {
		t.Fatalf("v2: %q %s", out.stdout, out.stderr)
	}
	if out := cellIn(t, home, "run", "--template", "no-such", "--", "true"); out.code == 0 || !strings.Contains(out.stderr, "no-such") {
		t.Fatalf("an unknown template: %d %s", out.code, out.stderr)
	}
}

// TestTemplateBuildThroughServe: the same CLI builds on a cell serve for the key's team (the
// daemon's data directory is held, so an in-process build is refused with a pointer to --api),
// a failing RUN names its step, and a sandbox of the template comes from the API.
func TestTemplateBuildThroughServe(t *testing.T) {
	d := newDaemon(t)
	srv, c := d.serve(t)
	dir := writeContext(t, "FROM base\nRUN echo built > /tmp/built\nUSER user\n", map[string]string{})
	if res := cellIn(t, d.home, "template", "build", "--name", "srv-app", dir); res.code == 0 || !strings.Contains(res.stderr, "--api") {
		t.Fatalf("an in-process build beside cell serve: %d\n%s", res.code, res.stderr)
	}
	res := cellIn(t, d.home, "template", "build", "--api", srv.url, "--api-key", d.key, "--name", "srv-app", dir)
	if res.code != 0 {
		t.Fatalf("build: %d\n%s", res.code, res.stderr)
	}
	info, err := c.Create(context.Background(), client.CreateOptions{Template: "srv-app", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(context.Background(), info.SandboxID) }()
	if out := execOut(t, c, info.SandboxID, "cat /tmp/built"); out != "built\n" {
		t.Fatalf("%q", out)
	}
	api := []string{"--api", srv.url, "--api-key", d.key}
	if ls := cellIn(t, d.home, append([]string{"template", "ls"}, api...)...); ls.code != 0 || !strings.Contains(ls.stdout, "srv-app") || !strings.Contains(ls.stdout, "ready") {
		t.Fatalf("ls: %d\n%s%s", ls.code, ls.stdout, ls.stderr)
	}
	if tag := cellIn(t, d.home, append([]string{"template", "tag", "srv-app", "stable"}, api...)...); tag.code != 0 {
		t.Fatalf("tag: %d %s", tag.code, tag.stderr)
	}
	stable, err := c.Create(context.Background(), client.CreateOptions{Template: "srv-app:stable", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Kill(context.Background(), stable.SandboxID)
	if rm := cellIn(t, d.home, append([]string{"template", "rm", "srv-app"}, api...)...); rm.code == 0 || !strings.Contains(rm.stderr, "used by") {
		t.Fatalf("rm of a template a sandbox runs from: %d %s", rm.code, rm.stderr)
	}
	bad := writeContext(t, "FROM base\nRUN true\nRUN echo nope >&2; exit 7\n", map[string]string{})
	res = cellIn(t, d.home, "template", "build", "--api", srv.url, "--api-key", d.key, "--name", "bad", bad)
	if res.code == 0 || !strings.Contains(res.stderr, "step 4") || !strings.Contains(res.stderr, "exited with code 7") || !strings.Contains(res.stderr, "nope") {
		t.Fatalf("a failing RUN (step 4 after USER root and WORKDIR /): %d\n%s", res.code, res.stderr)
	}
}

// TestTemplateBuildCrash: cell serve killed (SIGKILL) during a build leaves no half-made
// layer; after a restart the build reads failed, with a reason, and the next build succeeds.
func TestTemplateBuildCrash(t *testing.T) {
	d := newDaemon(t)
	srv, c := d.serve(t)
	ctx := context.Background()
	tc, err := c.CreateTemplate(ctx, "crashy", client.TemplateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := client.BuildSpec{FromImage: "e2bdev/base", Steps: []client.BuildStep{{Type: "RUN", Args: []string{"echo one > /tmp/one"}},
		{Type: "RUN", Args: []string{"sleep 600"}}}}
	if err := c.StartBuild(ctx, tc.TemplateID, tc.BuildID, spec); err != nil {
		t.Fatal(err)
	}
	// Killed once step 1's layer is saved and step 2 runs.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st, err := c.BuildStatus(ctx, tc.TemplateID, tc.BuildID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(logText(st.LogEntries), "sleep 600") {
			break
		}
		if time.Now().After(deadline) || st.Status == "error" {
			t.Fatalf("the build did not reach step 2: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = srv.cmd.Process.Signal(syscall.SIGKILL)
	_ = srv.cmd.Wait()
	_, c = d.serve(t)
	st, err := c.BuildStatus(ctx, tc.TemplateID, tc.BuildID, 0)
	if err != nil || st.Status != "error" || st.Reason == nil || !strings.Contains(st.Reason.Message, "stopped") {
		t.Fatalf("after the crash: %+v %v", st, err)
	}
	stale, _ := filepath.Glob(filepath.Join(d.home, "templates", "*", ".staging-*"))
	if len(stale) > 0 {
		t.Fatalf("half-made layers left: %v", stale)
	}
	// The next build reuses step 1's layer and finishes.
	tc2, err := c.CreateTemplate(ctx, "crashy", client.TemplateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec.Steps[1].Args = []string{"echo two > /tmp/two"}
	if err := c.StartBuild(ctx, tc2.TemplateID, tc2.BuildID, spec); err != nil {
		t.Fatal(err)
	}
	var logs []client.BuildLog
	if err := c.WaitBuild(ctx, tc2.TemplateID, tc2.BuildID, func(e client.BuildLog) { logs = append(logs, e) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logText(logs), "CACHED RUN echo one") {
		t.Fatalf("step 1 was not reused:\n%s", logText(logs))
	}
	info, err := c.Create(ctx, client.CreateOptions{Template: "crashy", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()
	if out := execOut(t, c, info.SandboxID, "cat /tmp/one /tmp/two"); out != "one\ntwo\n" {
		t.Fatalf("%q", out)
	}
}

func logText(entries []client.BuildLog) string {
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(e.Message)
		b.WriteByte('\n')
	}
	return b.String()
}

// TestRunWithPackages: `cell run --apt` installs the packages in a template built once (from
// Debian's mirror, which this machine reaches through a reserved address: opened as an
// operator would), and the next run with the same packages, in any order, starts from the cache.
func TestRunWithPackages(t *testing.T) {
	open := reservedOpenings(t, "deb.debian.org")
	home := t.TempDir()
	args := append(append([]string{"run", "--apt", "cowsay,sl"}, open...), "--", "bash", "-c", "/usr/games/cowsay moo | grep -c moo; test -x /usr/games/sl && echo sl")
	// Two at once, the packages in either order: one builds, the other waits for its layer.
	other := append([]string(nil), args...)
	other[2] = "sl,cowsay"
	results := make(chan cliResult, 1)
	go func() { results <- cellIn(t, home, other...) }()
	first := cellIn(t, home, args...)
	concurrent := <-results
	for _, r := range []cliResult{first, concurrent} {
		if r.code != 0 || r.stdout != "1\nsl\n" {
			t.Fatalf("a first run: %d %q\n%s", r.code, r.stdout, r.stderr)
		}
	}
	if built := strings.Count(first.stderr+concurrent.stderr, "apt-get install"); built != 1 {
		t.Fatalf("the layer was built %d times by two processes:\n%s\n---\n%s", built, first.stderr, concurrent.stderr)
	}
	args[2] = "sl,cowsay"
	second := cellIn(t, home, args...)
	if second.code != 0 || second.stdout != "1\nsl\n" || strings.Contains(second.stderr, "apt-get") {
		t.Fatalf("second run (cached): %d %q\n%s", second.code, second.stdout, second.stderr)
	}
	t.Logf("first run %v (the build), second %v", first.took.Round(time.Millisecond), second.took.Round(time.Millisecond))
	if bad := cellIn(t, home, "run", "--apt", "x;reboot", "--", "true"); bad.code == 0 || !strings.Contains(bad.stderr, "--apt") {
		t.Fatalf("a bad package name: %d %s", bad.code, bad.stderr)
	}
}

// TestTemplateCacheEviction: past --template-cache-size, a build's end removes the least
// recently used layers no tag points at (a deleted template's), never those a template stands
// on.
func TestTemplateCacheEviction(t *testing.T) {
	d := newDaemon(t)
	_, c := d.serve(t, "--template-cache-size", "1")
	ctx := context.Background()
	buildOne := func(name, cmd string) {
		t.Helper()
		tc, err := c.CreateTemplate(ctx, name, client.TemplateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.StartBuild(ctx, tc.TemplateID, tc.BuildID, client.BuildSpec{Steps: []client.BuildStep{{Type: "RUN", Args: []string{cmd}}}}); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitBuild(ctx, tc.TemplateID, tc.BuildID, nil); err != nil {
			t.Fatal(err)
		}
	}
	layers := func() []string {
		m, _ := filepath.Glob(filepath.Join(d.home, "templates", "layer-*"))
		return m
	}
	buildOne("first", "echo 1 > /tmp/f")
	first := layers()
	if len(first) == 0 {
		t.Fatal("the template's own layer was evicted")
	}
	info, err := c.Create(ctx, client.CreateOptions{Template: "first", Timeout: time.Minute})
	if err != nil {
		t.Fatalf("the first template after eviction: %v", err)
	}
	_ = c.Kill(ctx, info.SandboxID)
	if err := c.DeleteTemplate(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	buildOne("second", "echo 2 > /tmp/s")
	for _, l := range first {
		if _, err := os.Stat(l); err == nil {
			t.Errorf("the deleted template's layer %s was kept past the budget", filepath.Base(l))
		}
	}
	if len(layers()) == 0 {
		t.Fatal("the second template's layer was evicted")
	}
	info, err = c.Create(ctx, client.CreateOptions{Template: "second", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()
	if out := execOut(t, c, info.SandboxID, "cat /tmp/s"); out != "2\n" {
		t.Fatalf("%q", out)
	}
}

// TestTemplateMinFreeDisk: E2B's minFreeDiskMb grows the template's disk and file system after
// its steps (here a step that takes 500 MB); a sandbox of the template has that much free.
func TestTemplateMinFreeDisk(t *testing.T) {
	d := newDaemon(t)
	_, c := d.serve(t)
	ctx := context.Background()
	tc, err := c.CreateTemplate(ctx, "roomy", client.TemplateOptions{MinFreeDiskMiB: 4000})
	if err != nil {
		t.Fatal(err)
	}
	spec := client.BuildSpec{Steps: []client.BuildStep{{Type: "RUN", Args: []string{"head -c 500000000 /dev/zero > /home/user/big"}}}}
	if err := c.StartBuild(ctx, tc.TemplateID, tc.BuildID, spec); err != nil {
		t.Fatal(err)
	}
	var logs []client.BuildLog
	if err := c.WaitBuild(ctx, tc.TemplateID, tc.BuildID, func(e client.BuildLog) { logs = append(logs, e) }); err != nil {
		t.Fatalf("%v\n%s", err, logText(logs))
	}
	if !strings.Contains(logText(logs), "the disk grew for 4000 MiB free") {
		t.Fatalf("the build's log:\n%s", logText(logs))
	}
	info, err := c.Create(ctx, client.CreateOptions{Template: "roomy", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()
	var free, bsize uint64
	out := execOut(t, c, info.SandboxID, "stat -f -c '%a %S' /; ls -l /home/user/big | cut -d' ' -f5")
	var big string
	if _, err := fmt.Sscan(out, &free, &bsize, &big); err != nil || free*bsize < 4000<<20 || big != "500000000" {
		t.Fatalf("in a sandbox of the template: %q (%v): want 4000 MiB free and the step's file", out, err)
	}
	if _, err := c.CreateTemplate(ctx, "too-roomy", client.TemplateOptions{MinFreeDiskMiB: -1}); err == nil || !strings.Contains(err.Error(), "minFreeDiskMb") {
		t.Fatalf("a negative minFreeDiskMb: %v", err)
	}
}

// TestClientPackagesTemplate: the Go client's packages template (what `cell run --apt` does, on a
// cell serve): built once, the same packages in another order are the same template, all cached.
func TestClientPackagesTemplate(t *testing.T) {
	d := newDaemon(t)
	_, c := d.serve(t, reservedOpenings(t, "deb.debian.org")...)
	ctx := context.Background()
	name, err := c.PackagesTemplate(ctx, client.Packages{Apt: []string{"sl", "cowsay"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs []client.BuildLog
	again, err := c.PackagesTemplate(ctx, client.Packages{Apt: []string{"cowsay", "sl", "sl"}}, func(e client.BuildLog) { logs = append(logs, e) })
	if err != nil || again != name || !strings.Contains(logText(logs), "CACHED RUN apt-get") || strings.Contains(logText(logs), "done in") {
		t.Fatalf("the same packages again: %q (first %q), %v\n%s", again, name, err, logText(logs))
	}
	info, err := c.Create(ctx, client.CreateOptions{Template: name, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()
	if out := execOut(t, c, info.SandboxID, "/usr/games/cowsay moo | grep -c moo; test -x /usr/games/sl && echo sl"); out != "1\nsl\n" {
		t.Fatalf("in a sandbox of %s: %q", name, out)
	}
	if _, err := c.PackagesTemplate(ctx, client.Packages{Pip: []string{"$(reboot)"}}, nil); err == nil {
		t.Fatal("a bad package name was accepted")
	}
}
