package client

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/cellhq/cell/proto/filesystem"
	"github.com/cellhq/cell/proto/filesystem/filesystemconnect"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// hostileEnvd answers ListDir with entries and List with processes, whatever was asked.
type hostileEnvd struct {
	filesystemconnect.UnimplementedFilesystemHandler
	processconnect.UnimplementedProcessHandler
	entries   []*fspb.EntryInfo
	processes []*pb.ProcessInfo
}

func (h *hostileEnvd) ListDir(context.Context, *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	return connect.NewResponse(&fspb.ListDirResponse{Entries: h.entries}), nil
}

func (h *hostileEnvd) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	return connect.NewResponse(&pb.ListResponse{Processes: h.processes}), nil
}

// connectTo serves h behind a fake cell serve and returns a connection to its sandbox.
func (h *hostileEnvd) connectTo(t *testing.T) *Sandbox {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(filesystemconnect.NewFilesystemHandler(h))
	mux.Handle(processconnect.NewProcessHandler(h))
	mux.HandleFunc("POST /sandboxes/sb1/connect", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"sandboxID":"sb1","templateID":"base","clientID":"c"}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	sb, err := New(srv.URL, "k").Connect(context.Background(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func listDir(sb *Sandbox) (*fspb.ListDirResponse, error) {
	resp, err := sb.FS.ListDir(context.Background(), connect.NewRequest(&fspb.ListDirRequest{Path: "/d"}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// TestListingEntriesCountedBeforeDecoding: a listing of MaxRepeated+1 empty entries (2 MB on the
// wire, ~200 bytes each once decoded) is refused without being decoded.
func TestListingEntriesCountedBeforeDecoding(t *testing.T) {
	h := &hostileEnvd{entries: make([]*fspb.EntryInfo, MaxRepeated+1)}
	for i := range h.entries {
		h.entries[i] = &fspb.EntryInfo{}
	}
	sb := h.connectTo(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := listDir(sb)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "more than 1000000 elements in entries") {
		t.Fatalf("a listing of %d entries: %v", len(h.entries), err)
	}
	// The server's side (building and sending 2 MB) is counted too; decoding would be ~200 MB.
	if got := (after.TotalAlloc - before.TotalAlloc) >> 20; got > 64 {
		t.Fatalf("refusing a 2 MB listing allocated %d MB", got)
	}
	// What envd sends for a real directory is read whole.
	h.entries = realEntries(1000)
	msg, err := listDir(sb)
	if err != nil || len(msg.GetEntries()) != 1000 || msg.GetEntries()[999].GetName() != h.entries[999].GetName() {
		t.Fatalf("a listing of 1000 entries: %v", err)
	}
}

// realEntries is a listing as envd makes it of a directory of n files.
func realEntries(n int) []*fspb.EntryInfo {
	out := make([]*fspb.EntryInfo, n)
	for i := range out {
		name := "file-" + strings.Repeat("x", i%20)
		out[i] = &fspb.EntryInfo{Name: name, Path: "/home/user/" + name, Type: fspb.FileType_FILE_TYPE_FILE,
			Size: 1234, Mode: 0o644, Permissions: "-rw-r--r--", Owner: "user", Group: "user",
			ModifiedTime: timestamppb.New(time.Unix(1700000000, 0))}
	}
	return out
}

// TestAnswersHaveAReadLimit: an answer larger than the service's bound is refused (also when it
// comes compressed, as connect-go's handler sends it to a client that takes gzip).
func TestAnswersHaveAReadLimit(t *testing.T) {
	h := &hostileEnvd{
		entries:   []*fspb.EntryInfo{{Name: strings.Repeat("a", MaxFilesystemMessage)}},
		processes: []*pb.ProcessInfo{{Tag: proto.String(strings.Repeat("a", MaxProcessMessage))}},
	}
	sb := h.connectTo(t)
	if _, err := listDir(sb); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a listing over %d bytes: %v", MaxFilesystemMessage, err)
	}
	if _, err := sb.Process.List(context.Background(), connect.NewRequest(&pb.ListRequest{})); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a process list over %d bytes: %v", MaxProcessMessage, err)
	}
	// A big real listing stays within the bound: 100,000 entries.
	big := &fspb.ListDirResponse{Entries: realEntries(100_000)}
	if size := proto.Size(big); size > MaxFilesystemMessage/6 {
		t.Fatalf("100,000 entries take %d bytes", size)
	}
}

// TestBoundedCodecCountsEachRepeatedField: the bound is per field, packed scalars are one
// element, a malformed message is left to proto.Unmarshal, and a message within the bound
// decodes as with proto.Unmarshal.
func TestBoundedCodecCountsEachRepeatedField(t *testing.T) {
	c := boundedCodec{max: 2}
	three, _ := proto.Marshal(&fspb.ListDirResponse{Entries: []*fspb.EntryInfo{{Name: "a"}, {Name: "b"}, {Name: "c"}}})
	if err := c.Unmarshal(three, &fspb.ListDirResponse{}); err == nil || !strings.Contains(err.Error(), "more than 2 elements in entries") {
		t.Fatalf("3 entries with a bound of 2: %v", err)
	}
	two, _ := proto.Marshal(&fspb.ListDirResponse{Entries: []*fspb.EntryInfo{{Name: "a", Metadata: map[string]string{"k": "v", "l": "w", "m": "x"}}, {Name: "b"}}})
	var got fspb.ListDirResponse
	if err := c.Unmarshal(two, &got); err != nil || len(got.GetEntries()) != 2 || len(got.GetEntries()[0].GetMetadata()) != 3 {
		t.Fatalf("2 entries (a nested map of 3 is not counted): %v %v", err, &got)
	}
	if err := c.Unmarshal([]byte{0x0a, 0xff}, &fspb.ListDirResponse{}); err == nil || !strings.Contains(err.Error(), "unmarshal into") {
		t.Fatalf("a malformed message: %v", err)
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Fatal("marshalled a string")
	}
}

// FuzzBoundedCodec: on any bytes, boundedCodec decodes what proto.Unmarshal decodes into a
// listing of at most its bound of entries, the same, and refuses the rest; it never panics.
func FuzzBoundedCodec(f *testing.F) {
	for _, m := range []*fspb.ListDirResponse{
		{},
		{Entries: []*fspb.EntryInfo{{Name: "a"}, {Name: "b", Metadata: map[string]string{"k": "v"}}}},
		{Entries: []*fspb.EntryInfo{{}, {}, {}, {}}},
		{Entries: realEntries(3)},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0xff})
	f.Add([]byte{0x0a, 0x00, 0x0a, 0x00, 0x0a, 0x00, 0x0a, 0x00, 0x12, 0x00})
	const max = 3
	c := boundedCodec{max: max}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want, got fspb.ListDirResponse
		werr := proto.Unmarshal(b, &want)
		err := c.Unmarshal(b, &got)
		switch {
		case werr != nil:
			if err == nil {
				t.Fatalf("decoded what proto.Unmarshal refuses (%v)", werr)
			}
		case len(want.GetEntries()) > max:
			if err == nil || !strings.Contains(err.Error(), "more than 3 elements") {
				t.Fatalf("%d entries: %v", len(want.GetEntries()), err)
			}
		default:
			if err != nil || !proto.Equal(&got, &want) {
				t.Fatalf("%d entries: %v", len(want.GetEntries()), err)
			}
		}
	})
}
