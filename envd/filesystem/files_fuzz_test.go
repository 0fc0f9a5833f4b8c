package filesystem

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http/httptest"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"testing"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
)

// multipartBody builds a well-formed upload of parts (form name, filename, content).
func multipartBody(boundary string, parts ...[3]string) []byte {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	_ = mw.SetBoundary(boundary)
	for _, p := range parts {
		w, _ := mw.CreateFormFile(p[0], p[1])
		_, _ = io.WriteString(w, p[2])
	}
	_ = mw.Close()
	return b.Bytes()
}

// FuzzFilesUpload posts arbitrary multipart bodies (and boundaries, gzipped or not) to envd's
// /files, into one path, against mime/multipart read directly as the reference: never a panic,
// never a 5xx for a body, and an accepted upload wrote exactly the "file" part's bytes (envd
// reads through its own buffering, bulkReader and pieceReader, whose copies must not alter
// them).
func FuzzFilesUpload(f *testing.F) {
	for _, seed := range []struct {
		body     []byte
		boundary string
	}{
		{multipartBody("b0undary", [3]string{"file", "a.txt", "hello"}), "b0undary"},
		{multipartBody("b0undary", [3]string{"other", "x", "skip"}, [3]string{"file", "a.txt", string(bytes.Repeat([]byte{0xab}, 5000))}), "b0undary"},
		{multipartBody("b0undary", [3]string{"file", "a.txt", "one"}, [3]string{"file", "b.txt", "two"}), "b0undary"},
		{multipartBody("b0undary", [3]string{"other", "x", "no file"}), "b0undary"},
		{multipartBody("b0undary", [3]string{"file", "a.txt", "--b0undar\r\n--b0undary-"}), "b0undary"},
		{[]byte("--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\ntruncated"), "b0undary"},
		{[]byte("--b0undary--\r\n"), "b0undary"},
		// Cut off right after the last part's boundary, before its "--": mime/multipart's
		// NextPart wraps that EOF, and the upload is refused as cut off (CI's fuzzer found
		// this one).
		{[]byte("--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhello\r\n--b0undary"), "b0undary"},
		{[]byte(""), "b0undary"},
		{[]byte("no boundary at all"), ""},
		{multipartBody("b0undary", [3]string{"file", "a.txt", "x"}), "other"},
	} {
		f.Add(seed.body, seed.boundary, false)
		f.Add(seed.body, seed.boundary, true)
	}
	u, err := user.Current()
	if err != nil {
		f.Fatal(err)
	}
	files := &Files{Defaults: state.New(u.Username), Users: &process.Users{}}
	target := filepath.Join(f.TempDir(), "upload")
	f.Fuzz(func(t *testing.T, body []byte, boundary string, gz bool) {
		_ = os.Remove(target)
		ctypeHeader := mime.FormatMediaType("multipart/form-data", map[string]string{"boundary": boundary})
		if ctypeHeader == "" {
			ctypeHeader = "multipart/form-data; boundary=" + boundary
		}
		sent := body
		if gz {
			var zb bytes.Buffer
			zw := gzip.NewWriter(&zb)
			_, _ = zw.Write(body)
			_ = zw.Close()
			sent = zb.Bytes()
		}
		req := httptest.NewRequest("POST", "/files?"+url.Values{"path": {target}}.Encode(), bytes.NewReader(sent))
		req.Header.Set("Content-Type", ctypeHeader)
		if gz {
			req.Header.Set("Content-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		files.ServeHTTP(rec, req)

		if rec.Code >= 500 {
			t.Fatalf("%d for a body: %s", rec.Code, rec.Body.String())
		}
		if rec.Code != 200 {
			var e fileError
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != rec.Code || e.Message == "" {
				t.Fatalf("%d %q: not envd's error shape", rec.Code, rec.Body.String())
			}
		}
		// The reference: what the request's Content-Type and body say, read by mime/multipart.
		ctype, params, _ := mime.ParseMediaType(ctypeHeader)
		var want []byte
		switch ctype {
		case "multipart/form-data":
			var fileParts [][]byte
			mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
			var perr error
			for {
				part, err := mr.NextPart()
				// Only a bare EOF is the final boundary: NextPart wraps the EOF of a body
				// cut off before it, and such a body is malformed.
				if err == io.EOF {
					break
				}
				if err != nil {
					perr = err
					break
				}
				// Every part is read to its end, skipped ones too: a body cut off inside
				// one is malformed.
				content, err := io.ReadAll(part)
				if err != nil {
					perr = err
					break
				}
				if part.FormName() == "file" {
					fileParts = append(fileParts, content)
				}
			}
			if perr != nil || len(fileParts) != 1 {
				if rec.Code == 200 {
					t.Fatalf("accepted, but the reference found %d file parts (%v)", len(fileParts), perr)
				}
				return
			}
			want = fileParts[0]
		case "application/octet-stream", "":
			want = body
		default:
			if rec.Code != 415 {
				t.Fatalf("Content-Type %q: %d", ctype, rec.Code)
			}
			return
		}
		if rec.Code != 200 {
			t.Fatalf("refused a well-formed upload (%d bytes): %d %s", len(want), rec.Code, rec.Body.String())
		}
		got, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("the file has %d bytes, the part %d: they differ", len(got), len(want))
		}
	})
}

// A multipart upload cut off is refused as the client's (400), whether the cut is inside the
// file's part (it was a 500) or after it, before the final boundary (it was a 200: mime/multipart
// wraps that EOF, which the loop took for the clean end), or inside a part it skips.
func TestTruncatedMultipartRefused(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	files := &Files{Defaults: state.New(u.Username), Users: &process.Users{}}
	target := filepath.Join(t.TempDir(), "upload")
	whole := multipartBody("b0undary", [3]string{"file", "a.txt", "hello"})
	skipped := multipartBody("b0undary", [3]string{"file", "a.txt", "hello"}, [3]string{"other", "x", "skipped part"})
	for name, body := range map[string][]byte{
		"inside the file":         []byte("--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\ntrunc"),
		"before the end boundary": whole[:bytes.LastIndex(whole, []byte("--b0undary--"))],
		"inside a skipped part":   skipped[:len(skipped)-len("part\r\n--b0undary--\r\n")],
	} {
		req := httptest.NewRequest("POST", "/files?"+url.Values{"path": {target}}.Encode(), bytes.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b0undary")
		rec := httptest.NewRecorder()
		files.ServeHTTP(rec, req)
		if rec.Code != 400 {
			t.Errorf("%s: %d %s, want 400", name, rec.Code, rec.Body.String())
		}
	}
	req := httptest.NewRequest("POST", "/files?"+url.Values{"path": {target}}.Encode(), bytes.NewReader(whole))
	req.Header.Set("Content-Type", "multipart/form-data; boundary=b0undary")
	rec := httptest.NewRecorder()
	files.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("the whole body: %d %s", rec.Code, rec.Body.String())
	}
}
