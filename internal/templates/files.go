package templates

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/manager"
)

// UploadKey returns the key that signs upload URLs, kept in path (made on first use, private
// to the data directory's owner): URLs stay valid across restarts, and the key never leaves
// the host.
func UploadKey(path string) ([]byte, error) {
	if b, err := os.ReadFile(path); err == nil && len(b) == 32 {
		return b, nil
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, key, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	return key, nil
}

// uploadTTL is how long an upload URL is good for.
const uploadTTL = time.Hour

func (s *Service) uploadPath(team, hash string) string {
	return filepath.Join(uploadsDir(s.cfg.Dir), team, hash)
}

// openUpload opens team's uploaded files with hash.
func (s *Service) openUpload(team, hash string) (io.ReadCloser, error) {
	return os.Open(s.uploadPath(team, hash))
}

func (s *Service) sign(team, tid, hash string, expires int64) string {
	m := hmac.New(sha256.New, s.cfg.Key)
	fmt.Fprintf(m, "upload\x00%s\x00%s\x00%s\x00%d", team, tid, hash, expires)
	return hex.EncodeToString(m.Sum(nil))
}

// Files answers whether team's files with hash are uploaded for template tid, and if not, the
// URL to PUT them to (under base, Cell's own address as the client reached it): signed for
// this team, template and hash, it needs no API key, as E2B's SDKs send none.
func (s *Service) Files(ctx context.Context, team, tid, hash, base string) (present bool, putURL string, err error) {
	if !validHash(hash) {
		return false, "", fmt.Errorf("%w: hash: want 64 lower-case hex digits", manager.ErrInvalid)
	}
	if _, err := s.cfg.Store.TemplateByID(ctx, team, tid); err != nil {
		return false, "", notFound(err, "template %q", tid)
	}
	if _, err := os.Stat(s.uploadPath(team, hash)); err == nil {
		return true, "", nil
	}
	exp := time.Now().Add(uploadTTL).Unix()
	q := url.Values{"team": {team}, "expires": {strconv.FormatInt(exp, 10)}, "signature": {s.sign(team, tid, hash, exp)}}
	return false, fmt.Sprintf("%s/templates/%s/files/%s?%s", base, url.PathEscape(tid), hash, q.Encode()), nil
}

// ErrUploadAuth is returned for an upload whose URL is not one Files gave, or expired.
var ErrUploadAuth = errors.New("upload URL not valid")

// ErrTooLarge is returned for an upload over MaxUpload.
var ErrTooLarge = errors.New("upload too large")

// Upload stores the files PUT to a URL Files gave: q is its query. The body must be exactly
// length bytes (Content-Length); it is published whole or not at all.
func (s *Service) Upload(ctx context.Context, tid, hash string, q url.Values, body io.Reader, length int64) error {
	team := q.Get("team")
	exp, err := strconv.ParseInt(q.Get("expires"), 10, 64)
	if err != nil || !validHash(hash) || ids.Validate("team", team) != nil ||
		!hmac.Equal([]byte(q.Get("signature")), []byte(s.sign(team, tid, hash, exp))) {
		return ErrUploadAuth
	}
	if time.Now().Unix() > exp {
		return fmt.Errorf("%w: it expired", ErrUploadAuth)
	}
	return s.PutFiles(ctx, team, hash, body, length)
}

// PutFiles stores team's files with hash (a COPY step's tar of length bytes): published whole
// or not at all.
func (s *Service) PutFiles(_ context.Context, team, hash string, body io.Reader, length int64) error {
	if !validHash(hash) {
		return fmt.Errorf("%w: hash: want 64 lower-case hex digits", manager.ErrInvalid)
	}
	if length < 0 {
		return fmt.Errorf("%w: Content-Length: required", manager.ErrInvalid)
	}
	if length > s.cfg.MaxUpload {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, length, s.cfg.MaxUpload)
	}
	if s.cfg.Disk != nil {
		if err := s.cfg.Disk.Admit(uint64(length), "an upload of template files"); err != nil {
			return err
		}
	}
	dir := filepath.Join(uploadsDir(s.cfg.Dir), team)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".upload-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	n, err := io.Copy(tmp, io.LimitReader(body, length+1))
	if err == nil && n == length {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: reading the upload: %w", manager.ErrInvalid, err)
	}
	if n != length {
		return fmt.Errorf("%w: the body has %d bytes, Content-Length says %d", manager.ErrInvalid, min(n, length+1), length)
	}
	return os.Rename(tmp.Name(), s.uploadPath(team, hash))
}

func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && h == strings.ToLower(h)
}
