package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
