package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/pkg/client"
)

// treeLayer is a gzipped tar layer of the directory tree, with owners and modes.
func treeLayer(t *testing.T, tree string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == tree {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		h.Name = filepath.ToSlash(rel)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			h.Uid, h.Gid = int(st.Uid), int(st.Gid)
		}
		h.Uname, h.Gname = "", ""
		if !fi.Mode().IsRegular() {
			h.Size = 0
			if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeSymlink {
				return nil // devices and FIFOs: none in an image
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			_ = f.Close()
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// filesLayer is a layer of regular files (and whiteouts, named .wh.<file>).
func filesLayer(t *testing.T, files map[string]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testRegistry starts an OCI registry on the loopback serving an image the test makes: Cell's
// base root file system (as Debian's images are one) as its first layer, and a second that adds
// /app/hello.txt and deletes /usr/bin/less, with an environment and a working directory.
func testRegistry(t *testing.T) (host string) {
	t.Helper()
	keys, err := (&image.Builder{Home: testEnv.home, Envd: testEnv.envd}).Keys()
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(testEnv.home, "images", "rootfs", keys.Tree, "tree")
	if _, err := os.Stat(tree); err != nil {
		t.Fatalf("the base root file system tree (the image's first layer): %v", err)
	}
	img, err := mutate.AppendLayers(empty.Image, treeLayer(t, tree),
		filesLayer(t, map[string]string{"app/hello.txt": "hello from an image\n", "usr/bin/.wh.less": ""}))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello-from-config"}
	cf.Config.WorkingDir = "/app"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host = strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(host + "/library/cellimg:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return host
}

// TestTemplateFromImage: a build `fromImage` pulls an OCI image from a registry (through the
// operator's mirror for docker.io), unpacks and provisions it, boots it, and runs its steps; a
// sandbox of it has the image's files, environment and working directory; the next build finds
// the image's layer cached; a registry a user names on a private address is refused.
func TestTemplateFromImage(t *testing.T) {
	host := testRegistry(t)
	d := newDaemon(t)
	srv, c := d.serve(t, "--registry-mirror", "docker.io=http://"+host)
	ctx := context.Background()
	build := func(tname string, spec client.BuildSpec) (string, error) {
		tc, err := c.CreateTemplate(ctx, tname, client.TemplateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.StartBuild(ctx, tc.TemplateID, tc.BuildID, spec); err != nil {
			return "", err
		}
		var logs []client.BuildLog
		err = c.WaitBuild(ctx, tc.TemplateID, tc.BuildID, func(e client.BuildLog) { logs = append(logs, e) })
		return logText(logs), err
	}
	spec := client.BuildSpec{FromImage: "cellimg:1", Steps: []client.BuildStep{{Type: "RUN", Args: []string{"echo $GREETING $(id -un) > /tmp/built"}}}}
	logs, err := build("from-image", spec)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	t.Logf("the first build's log:\n%s", logs)
	if !strings.Contains(logs, "pulling cellimg:1 from "+host) || !strings.Contains(logs, "unpacked") {
		t.Errorf("the build's log does not say it pulled the image:\n%s", logs)
	}
	info, err := c.Create(ctx, client.CreateOptions{Template: "from-image", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()
	out := execOut(t, c, info.SandboxID, "cat /app/hello.txt /tmp/built; pwd; id -un; echo $GREETING; test -e /usr/bin/less || echo no-less")
	want := "hello from an image\nhello-from-config user\n/app\nuser\nhello-from-config\nno-less\n"
	if out != want {
		t.Fatalf("in a sandbox of the image:\n%q\nwant\n%q", out, want)
	}
	// The same image again: its layer is the cache's, and so is the step.
	logs, err = build("from-image-2", spec)
	if err != nil || !strings.Contains(logs, "CACHED cellimg:1") || strings.Contains(logs, "unpacked") {
		t.Fatalf("the second build of the image: %v\n%s", err, logs)
	}
	// A Dockerfile's FROM through `cell template build`: the same image, the same layer.
	dir := writeContext(t, "FROM cellimg:1\nRUN echo from-dockerfile > /tmp/df\n", map[string]string{})
	res := cellIn(t, d.home, "template", "build", "--api", srv.url, "--api-key", d.key, "--name", "df-image", dir)
	if res.code != 0 || !strings.Contains(res.stderr, "CACHED cellimg:1") {
		t.Fatalf("cell template build FROM cellimg:1: %d\n%s", res.code, res.stderr)
	}
	// The registry itself, named by a user: it is on the loopback, which builds never reach.
	logs, err = build("direct", client.BuildSpec{FromImage: host + "/library/cellimg:1"})
	if err == nil || !strings.Contains(err.Error()+logs, "not reachable for builds") {
		t.Fatalf("a build from a registry on the loopback: %v\n%s", err, logs)
	}
	// No such image; a bad reference; credentials of a kind Cell does not take.
	if logs, err = build("missing", client.BuildSpec{FromImage: "nothing-here:1"}); err == nil || !strings.Contains(err.Error()+logs, "nothing-here") {
		t.Fatalf("a build from a missing image: %v\n%s", err, logs)
	}
	if _, err = build("bad", client.BuildSpec{FromImage: "Bad Ref!"}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("a bad reference: %v", err)
	}
	if _, err = build("aws", client.BuildSpec{FromImage: "cellimg:1", FromImageRegistry: []byte(`{"type":"aws","awsAccessKeyId":"k"}`)}); err == nil || !strings.Contains(err.Error(), "type aws") {
		t.Fatalf("aws credentials: %v", err)
	}
}
