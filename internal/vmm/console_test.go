package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellhq/cell/internal/channel"
)

func TestConsoleBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	big := bytes.Repeat([]byte("0123456789abcdef"), (ConsoleLogLimit/16)+1000)
	in := append(big, []byte("THE END\n")...)
	c, err := startConsole(bytes.NewReader(in), path)
	if err != nil {
		t.Fatal(err)
	}
	<-c.done
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > ConsoleLogLimit+200 {
		t.Fatalf("log is %d bytes, limit %d", st.Size(), ConsoleLogLimit)
	}
	got := c.tail.String()
	if len(got) != tailSize || !strings.HasSuffix(got, "THE END\n") {
		t.Fatalf("tail has %d bytes, ends %q", len(got), got[len(got)-10:])
	}
}

// envd's idle markers are counted however the console stream is cut, and none twice.
func TestIdleMarkers(t *testing.T) {
	var m markers
	n, more := m.count()
	if n != 0 {
		t.Fatalf("count %d before any output", n)
	}
	stream := "boot\r\n" + channel.IdleMarker + "\r\nnoise cell-envd: wait\r\n" + channel.IdleMarker + channel.IdleMarker + "\r\n"
	for i := 0; i < len(stream); i += 3 { // pieces that split every marker somewhere
		_, _ = m.Write([]byte(stream[i:min(i+3, len(stream))]))
	}
	select {
	case <-more:
	default:
		t.Fatal("the channel from count was not closed when markers came")
	}
	if n, _ := m.count(); n != 3 {
		t.Fatalf("counted %d markers, want 3", n)
	}
	_, _ = m.Write([]byte(channel.IdleMarker[:5]))
	if n, _ := m.count(); n != 3 {
		t.Fatalf("a partial marker counted: %d", n)
	}
}
