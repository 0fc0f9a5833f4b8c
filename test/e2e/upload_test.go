package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellhq/cell/pkg/client"
	"github.com/cellhq/cell/pkg/envd"
)

// TestMultipartUploadsThroughServe sends multipart uploads the way E2B's SDKs do, through
// `cell serve`'s proxy: a large file after a plain field (with metadata), two file parts, a
// signed URL without the access token (and a forged one), a body without a path (envd takes the
// part's file name), and bodies without a file part or not multipart at all.
func TestMultipartUploadsThroughServe(t *testing.T) {
	d := newDaemon(t)
	srv, c := d.serve(t)
	ctx := context.Background()
	info, err := c.Create(ctx, client.CreateOptions{Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()

	type part struct {
		field, name string
		data        []byte
	}
	post := func(query url.Values, token string, parts []part, raw []byte) (int, string) {
		t.Helper()
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for _, p := range parts {
			var w io.Writer
			if p.name == "" {
				w, err = mw.CreateFormField(p.field)
			} else {
				w, err = mw.CreateFormFile(p.field, p.name)
			}
			if err != nil {
				t.Fatal(err)
			}
			_, _ = w.Write(p.data)
		}
		_ = mw.Close()
		if raw != nil {
			body.Reset()
			body.Write(raw)
		}
		req, _ := http.NewRequest("POST", srv.url+"/files?"+query.Encode(), &body)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		req.Header.Set("E2b-Sandbox-Id", info.SandboxID)
		req.Header.Set("E2b-Sandbox-Port", "49983")
		req.Header.Set("X-Metadata-Origin", "test")
		if token != "" {
			req.Header.Set(envd.AccessTokenHeader, token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	sum := func(path string) string {
		t.Helper()
		return strings.Fields(execOut(t, c, info.SandboxID, "sha256sum "+path))[0]
	}
	tok := info.EnvdAccessToken

	big := make([]byte, 5<<20)
	_, _ = rand.Read(big)
	want := sha256.Sum256(big)
	status, body := post(url.Values{"path": {"/home/user/big.bin"}, "username": {"user"}}, tok,
		[]part{{field: "note", data: []byte("not a file")}, {field: "file", name: "big.bin", data: big}}, nil)
	var entries []struct{ Name, Type, Path string }
	if status != 200 || json.Unmarshal([]byte(body), &entries) != nil || len(entries) != 1 || entries[0].Path != "/home/user/big.bin" {
		t.Fatalf("upload: %d %s", status, body)
	}
	if got := sum("/home/user/big.bin"); got != hex.EncodeToString(want[:]) {
		t.Fatalf("uploaded file's sha256 %s, want %x", got, want)
	}
	if owner := strings.TrimSpace(execOut(t, c, info.SandboxID, "stat -c %U /home/user/big.bin")); owner != "user" {
		t.Errorf("uploaded file is owned by %q", owner)
	}
	md := execOut(t, c, info.SandboxID, `python3 -c "import os; print(os.getxattr('/home/user/big.bin', 'user.origin').decode())"`)
	if strings.TrimSpace(md) != "test" {
		t.Errorf("metadata header: xattr user.origin is %q", md)
	}

	// Two file parts to one path, as E2B's envd answers it: 400 naming the path, the first part
	// written.
	status, body = post(url.Values{"path": {"/home/user/two.txt"}}, tok,
		[]part{{field: "file", name: "a", data: []byte("first")}, {field: "file", name: "b", data: []byte("second")}}, nil)
	if status != 400 || !strings.Contains(body, "/home/user/two.txt") {
		t.Fatalf("two parts: %d %s", status, body)
	}
	if got := execOut(t, c, info.SandboxID, "cat /home/user/two.txt"); got != "first" {
		t.Fatalf("two parts left %q", got)
	}

	// A signed URL instead of the token (the signature covers the path, which envd still sees).
	exp := time.Now().Add(time.Minute).Unix()
	q := url.Values{"path": {"/home/user/signed.txt"}, "username": {"user"},
		"signature": {envd.Sign("/home/user/signed.txt", "write", "user", tok, exp)}, "signature_expiration": {strconv.FormatInt(exp, 10)}}
	if status, body = post(q, "", []part{{field: "file", name: "s", data: []byte("signed")}}, nil); status != 200 {
		t.Fatalf("signed upload: %d %s", status, body)
	}
	q.Set("signature", "v1_forged")
	if status, body = post(q, "", []part{{field: "file", name: "s", data: []byte("forged")}}, nil); status != 401 {
		t.Fatalf("forged signature: %d %s", status, body)
	}
	if got := execOut(t, c, info.SandboxID, "cat /home/user/signed.txt"); got != "signed" {
		t.Fatalf("signed upload left %q", got)
	}

	// No path in the URL: envd takes each part's file name.
	if status, body = post(url.Values{}, tok, []part{{field: "file", name: "/home/user/named.txt", data: []byte("named")}}, nil); status != 200 {
		t.Fatalf("upload by part name: %d %s", status, body)
	}
	if got := execOut(t, c, info.SandboxID, "cat /home/user/named.txt"); got != "named" {
		t.Fatalf("upload by part name left %q", got)
	}

	// No file part, and a body that is not multipart at all: 400, and the sandbox still serves.
	if status, body = post(url.Values{"path": {"/home/user/x"}}, tok, []part{{field: "note", data: []byte("x")}}, nil); status != 400 || !strings.Contains(body, `no part named \"file\"`) {
		t.Fatalf("no file part: %d %s", status, body)
	}
	if status, body = post(url.Values{"path": {"/home/user/x"}}, tok, nil, []byte("garbage")); status != 400 {
		t.Fatalf("malformed body: %d %s", status, body)
	}
	if got := execOut(t, c, info.SandboxID, "echo alive"); got != "alive\n" {
		t.Fatalf("after bad uploads: %q", got)
	}
}
