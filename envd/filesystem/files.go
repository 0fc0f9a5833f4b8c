package filesystem

import (
	"bytes"
	"compress/gzip"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/internal/memcopy"
	"github.com/cellhq/cell/pkg/envd"
)

// Files serves GET and POST /files.
type Files struct {
	Defaults *state.Defaults
	Users    *process.Users
	// Now is the clock signatures are checked against (time.Now when nil).
	Now func() time.Time
}

type fileError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// WriteError writes envd's JSON error body.
func WriteError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(fileError{Code: code, Message: fmt.Sprintf(format, args...)})
}

// authorize checks the access token or, failing that, the URL's signature for operation.
func (f *Files) authorize(r *http.Request, operation string) (int, error) {
	token := f.Defaults.Token()
	if token == "" {
		return 0, nil
	}
	if got := r.Header.Get(envd.AccessTokenHeader); got != "" {
		if f.Defaults.CheckToken(got) {
			return 0, nil
		}
		return http.StatusUnauthorized, errors.New("invalid access token")
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		return http.StatusUnauthorized, errors.New("missing access token or signature")
	}
	var exp int64
	if s := q.Get("signature_expiration"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return http.StatusBadRequest, fmt.Errorf("signature_expiration: %q is not a unix time", s)
		}
		now := time.Now
		if f.Now != nil {
			now = f.Now
		}
		if n < now().Unix() {
			return http.StatusUnauthorized, errors.New("signature expired")
		}
		exp = n
	}
	want := envd.Sign(q.Get("path"), operation, q.Get("username"), token, exp)
	if subtle.ConstantTimeCompare([]byte(sig), []byte(want)) != 1 {
		return http.StatusUnauthorized, errors.New("invalid signature")
	}
	return 0, nil
}

func (f *Files) identity(r *http.Request) (process.Identity, int, error) {
	name := r.URL.Query().Get("username")
	if name == "" {
		name = process.UserFromHeader(r.Header)
	}
	if name == "" {
		name = f.Defaults.User()
	}
	id, err := f.Users.Lookup(name)
	if err != nil {
		return id, http.StatusUnauthorized, fmt.Errorf("username: user %q not found", name)
	}
	return id, 0, nil
}

// ServeHTTP handles GET (download) and POST (upload).
func (f *Files) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	} else if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD, POST")
		WriteError(w, http.StatusMethodNotAllowed, "method %s not allowed on /files", r.Method)
		return
	}
	if code, err := f.authorize(r, op); err != nil {
		WriteError(w, code, "%v", err)
		return
	}
	id, code, err := f.identity(r)
	if err != nil {
		WriteError(w, code, "%v", err)
		return
	}
	if op == "read" {
		f.download(w, r, id)
		return
	}
	f.upload(w, r, id)
}

func (f *Files) download(w http.ResponseWriter, r *http.Request, id process.Identity) {
	p, err := resolve(r.URL.Query().Get("path"), id)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "path: %v", errors.Unwrap(err))
		return
	}
	file, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			WriteError(w, http.StatusNotFound, "path %s does not exist", p)
			return
		}
		WriteError(w, http.StatusBadRequest, "opening %s: %v", p, err)
		return
	}
	defer func() { _ = file.Close() }()
	st, err := file.Stat()
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "stat %s: %v", p, err)
		return
	}
	if st.IsDir() {
		WriteError(w, http.StatusBadRequest, "path %s is a directory", p)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filepath.Base(p)}))
	if acceptsGzip(r.Header.Get("Accept-Encoding")) && r.Header.Get("Range") == "" && st.Size() > 0 && compressible(file) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Vary", "Accept-Encoding")
		w.Header().Set("Last-Modified", st.ModTime().UTC().Format(http.TimeFormat))
		if r.Method == http.MethodHead {
			return
		}
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		_, _ = io.Copy(gz, file)
		_ = gz.Close()
		return
	}
	if r.Header.Get("Range") != "" || conditional(r) {
		http.ServeContent(w, r, "", st.ModTime(), file)
		return
	}
	// The whole file, in large writes: each write to the channel is a frame, and under TCG the
	// guest's cost is per frame more than per byte (ServeContent writes 32 KiB at a time).
	w.Header().Set("Last-Modified", st.ModTime().UTC().Format(http.TimeFormat))
	if st.Size() <= fileChunk {
		serveSmall(w, r, file, st.Size())
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// Neither side's shortcut (File.WriteTo, ReaderFrom) may pick a smaller buffer.
	_, _ = io.CopyBuffer(struct{ io.Writer }{w}, io.LimitReader(file, st.Size()), make([]byte, fileChunk))
}

// serveSmall answers with a file whose size says it is small, read to its end first: the size of
// a pseudo file says nothing of its content (/proc's are 0 bytes, /sys's 4096), so the length
// sent is what was read. Content beyond fileChunk follows without a length, to the file's end.
func serveSmall(w http.ResponseWriter, r *http.Request, file *os.File, size int64) {
	var buf bytes.Buffer
	buf.Grow(int(size) + bytes.MinRead)
	if _, err := buf.ReadFrom(io.LimitReader(file, fileChunk+1)); err != nil {
		WriteError(w, http.StatusInternalServerError, "reading %s: %v", file.Name(), err)
		return
	}
	more := buf.Len() > fileChunk
	if !more {
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := w.Write(buf.Bytes()); err != nil || !more {
		return
	}
	_, _ = io.CopyBuffer(struct{ io.Writer }{w}, file, make([]byte, fileChunk))
}

// fileChunk is the size of the writes of a download and of the reads of an upload.
const fileChunk = 256 << 10

// multipartBuffer is how much of a multipart body is read at once. mime/multipart reads through
// a 4 KiB buffer of its own whatever it is given, so without this every 4 KiB of the file would
// be a trip down through the HTTP body and the channel's stream.
const multipartBuffer = 1 << 20

// partPiece is the most read from a multipart part at once: the part copies out of
// mime/multipart's 4 KiB buffer, at any offset, and Go's memmove copies misaligned blocks over
// 2 KiB a byte at a time on the guest's CPU (see memcopy).
const partPiece = 2048

// bulkReader reads its reader multipartBuffer at a time and hands the bytes on with
// memcopy.Copy (mime/multipart asks for them at any offset of its buffer).
type bulkReader struct {
	r      io.Reader
	buf    []byte
	lo, hi int
	err    error
}

func (b *bulkReader) Read(p []byte) (int, error) {
	if b.lo == b.hi {
		if b.err != nil {
			return 0, b.err
		}
		if b.buf == nil {
			b.buf = make([]byte, multipartBuffer)
		}
		b.lo = 0
		b.hi, b.err = b.r.Read(b.buf)
		if b.hi == 0 {
			return 0, b.err
		}
	}
	n := memcopy.Copy(p, b.buf[b.lo:b.hi])
	b.lo += n
	return n, nil
}

// pieceReader fills each read from r in pieces of at most partPiece, so that a part is still
// written to its file in large writes.
type pieceReader struct{ r io.Reader }

func (p pieceReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := p.r.Read(b[n:min(n+partPiece, len(b))])
		n += m
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
	}
	return n, nil
}

// conditional says whether r asks for the file only under a condition (ServeContent answers
// those).
func conditional(r *http.Request) bool {
	for _, h := range []string{"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if r.Header.Get(h) != "" {
			return true
		}
	}
	return false
}

// compressible says whether gzip is worth it for f: it compresses a sample from the start and
// answers no when that saves less than a tenth. Clients (fetch) ask for gzip by default, and
// compressing incompressible data costs far more guest CPU under TCG than the bytes it saves.
func compressible(f *os.File) bool {
	sample := make([]byte, 64<<10)
	n, _ := io.ReadFull(f, sample)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false
	}
	var out countWriter
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	_, _ = zw.Write(sample[:n])
	_ = zw.Close()
	return n > 0 && out.n < n*9/10
}

type countWriter struct{ n int }

func (c *countWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

func acceptsGzip(h string) bool {
	for _, part := range strings.Split(h, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			v, err := strconv.ParseFloat(q, 64)
			return err == nil && v > 0
		}
		return true
	}
	return false
}

// uploaded is one entry of the upload response.
type uploaded struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Path     string            `json:"path"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

func (f *Files) upload(w http.ResponseWriter, r *http.Request, id process.Identity) {
	md, err := metadataFrom(r.Header)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	body := io.Reader(r.Body)
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			WriteError(w, http.StatusBadRequest, "Content-Encoding gzip: %v", err)
			return
		}
		defer func() { _ = gz.Close() }()
		body = gz
	}
	qpath := r.URL.Query().Get("path")
	ctype, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var out []uploaded
	switch ctype {
	case "multipart/form-data":
		mr := multipart.NewReader(&bulkReader{r: body}, params["boundary"])
		for {
			part, err := mr.NextPart()
			if err == io.EOF { // the final boundary; a body cut off before it is a wrapped EOF
				break
			}
			if err != nil {
				WriteError(w, http.StatusBadRequest, "reading multipart body: %v", err)
				return
			}
			if part.FormName() != "file" {
				// Read to its end (Close would ignore a body cut off inside it).
				if _, err := io.Copy(io.Discard, part); err != nil {
					WriteError(w, http.StatusBadRequest, "reading multipart body: %v", err)
					return
				}
				continue
			}
			target := qpath
			if target == "" {
				target = partPath(part)
			}
			p, err := uploadPath(target, id)
			if err != nil {
				_ = part.Close()
				WriteError(w, http.StatusBadRequest, "%v", err)
				return
			}
			if slices.ContainsFunc(out, func(u uploaded) bool { return u.Path == p }) {
				_ = part.Close()
				WriteError(w, http.StatusBadRequest, "path: %s is named by more than one part of this upload (the parts before this one were written)", p)
				return
			}
			u, code, err := writeFile(p, pieceReader{part}, id, md)
			_ = part.Close()
			if err != nil {
				WriteError(w, code, "%v", err)
				return
			}
			out = append(out, u)
		}
		if len(out) == 0 {
			WriteError(w, http.StatusBadRequest, "multipart body: no part named \"file\"")
			return
		}
	case "application/octet-stream", "":
		if qpath == "" {
			WriteError(w, http.StatusBadRequest, "path: required for an octet-stream upload")
			return
		}
		p, err := uploadPath(qpath, id)
		if err != nil {
			WriteError(w, http.StatusBadRequest, "%v", err)
			return
		}
		u, code, err := writeFile(p, body, id, md)
		if err != nil {
			WriteError(w, code, "%v", err)
			return
		}
		out = append(out, u)
	default:
		WriteError(w, http.StatusUnsupportedMediaType, "Content-Type %q: use multipart/form-data or application/octet-stream", ctype)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// partPath is the path a multipart part is for when the request names none: the whole filename
// of its Content-Disposition. E2B's SDKs write several files in one request that way, each
// part's filename its path (mime/multipart's FileName keeps only the last element).
func partPath(part *multipart.Part) string {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

func metadataFrom(h http.Header) (map[string]string, error) {
	var md map[string]string
	for k, vs := range h {
		key, ok := strings.CutPrefix(http.CanonicalHeaderKey(k), envd.MetadataHeaderPrefix)
		if !ok || len(vs) == 0 {
			continue
		}
		// Header names are canonicalised in transit; metadata keys are kept lower-case.
		key = strings.ToLower(key)
		if key == "" || len(key) > 200 || len(vs[0]) > 4000 {
			return nil, fmt.Errorf("metadata header %s: key or value too long", k)
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = vs[0]
	}
	return md, nil
}

// uploadPath is the absolute path an upload to path writes for id.
func uploadPath(path string, id process.Identity) (string, error) {
	p, err := resolve(path, id)
	if err != nil {
		return "", fmt.Errorf("path: %w", errors.Unwrap(err))
	}
	return p, nil
}

// writeFile writes r to the absolute path p (see uploadPath), creating parents, owned by id,
// with metadata md.
func writeFile(p string, r io.Reader, id process.Identity, md map[string]string) (uploaded, int, error) {
	if err := mkdirAllAs(filepath.Dir(p), id); err != nil {
		return uploaded{}, statusFor(err), fmt.Errorf("creating the parents of %s: %w", p, err)
	}
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return uploaded{}, http.StatusBadRequest, fmt.Errorf("path %s is a directory", p)
	}
	file, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return uploaded{}, statusFor(err), fmt.Errorf("opening %s: %w", p, err)
	}
	// Large reads, as for downloads (File.ReadFrom would read 32 KiB at a time).
	src := &sourceReader{r: r}
	_, err = io.CopyBuffer(struct{ io.Writer }{file}, src, make([]byte, fileChunk))
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if src.err != nil { // the upload itself was cut off or malformed: the client's fault
		return uploaded{}, http.StatusBadRequest, fmt.Errorf("reading the upload of %s: %w", p, src.err)
	}
	if err != nil {
		return uploaded{}, statusFor(err), fmt.Errorf("writing %s: %w", p, err)
	}
	if err := os.Lchown(p, int(id.UID), int(id.GID)); err != nil {
		return uploaded{}, statusFor(err), fmt.Errorf("chown %s: %w", p, err)
	}
	for k, v := range md {
		if err := unix.Lsetxattr(p, xattrPrefix+k, []byte(v), 0); err != nil {
			return uploaded{}, statusFor(err), fmt.Errorf("metadata %s on %s: %w", k, p, err)
		}
	}
	return uploaded{Name: filepath.Base(p), Type: "file", Path: p, Metadata: md}, 0, nil
}

// sourceReader remembers the error its reader gave (other than the end), so that a failed copy
// can tell a bad upload (400) from a failed write (507, 403, 500).
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

func statusFor(err error) int {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return http.StatusInsufficientStorage
	case errors.Is(err, fs.ErrPermission):
		return http.StatusForbidden
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENAMETOOLONG):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}
