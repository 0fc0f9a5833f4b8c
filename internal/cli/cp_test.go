package cli

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/pkg/client"
	fspb "github.com/cellhq/cell/proto/filesystem"
	"github.com/cellhq/cell/proto/filesystem/filesystemconnect"
)

// hostileFS is a guest whose listing of /d names entries that would reach outside the copy, and
// whose files all hold "x".
type hostileFS struct {
	filesystemconnect.UnimplementedFilesystemHandler
	names []string
}

func (h *hostileFS) Stat(_ context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	return connect.NewResponse(&fspb.StatResponse{Entry: &fspb.EntryInfo{
		Name: "d", Path: req.Msg.GetPath(), Type: fspb.FileType_FILE_TYPE_DIRECTORY, Mode: 0o755}}), nil
}

func (h *hostileFS) ListDir(_ context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	var out []*fspb.EntryInfo
	for _, n := range h.names {
		out = append(out, &fspb.EntryInfo{Name: n, Path: req.Msg.GetPath() + "/" + n, Type: fspb.FileType_FILE_TYPE_FILE, Mode: 0o644})
	}
	return connect.NewResponse(&fspb.ListDirResponse{Entries: out}), nil
}

// TestCopyOutRefusesNamesLeavingTheCopy: a sandbox that lists "..", "../escape" or "a/b" in a
// directory copied out gets an error, and nothing is written outside the destination.
func TestCopyOutRefusesNamesLeavingTheCopy(t *testing.T) {
	for _, bad := range []string{"..", "../escape", "a/b", "."} {
		t.Run(bad, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.Handle(filesystemconnect.NewFilesystemHandler(&hostileFS{names: []string{"fine", bad}}))
			mux.HandleFunc("POST /sandboxes/sb1/connect", func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, `{"sandboxID":"sb1","templateID":"base","clientID":"c"}`)
			})
			mux.HandleFunc("GET /files", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "x") })
			srv := httptest.NewServer(mux)
			defer srv.Close()

			parent := t.TempDir()
			dst := filepath.Join(parent, "out")
			err := copyPaths(context.Background(), client.New(srv.URL, "k"), "sb1:/d", dst, "", nil, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "listed an entry named") {
				t.Fatalf("copy of a listing with %q: %v", bad, err)
			}
			var files []string
			_ = filepath.Walk(parent, func(p string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() {
					files = append(files, p)
				}
				return nil
			})
			if len(files) != 1 || files[0] != filepath.Join(dst, "fine") {
				t.Fatalf("files written: %v", files)
			}
		})
	}
}
