package vmm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// The console log knows when its bytes were written: each millisecond's output gets that
// millisecond, a reader sees the log as it was when opened, and the points stay bounded.
func TestConsoleStamps(t *testing.T) {
	dir := t.TempDir()
	pr, pw := io.Pipe()
	c, err := startConsole(pr, filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{dir: WorkDir{Path: dir}, console: c}
	var times []time.Time
	for i := range 3 {
		times = append(times, time.Now())
		if _, err := fmt.Fprintf(pw, "line %d\n", i); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The console copies in the background: wait until all of it is in the file.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if st, err := os.Stat(filepath.Join(dir, "console.log")); err == nil && st.Size() == int64(3*len("line 0\n")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the console did not write its log")
		}
	}
	opened := time.Now()
	log, err := vm.OpenConsoleLog()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(pw, "after the open\n"); err != nil {
		t.Fatal(err)
	}
	if log.Size() != int64(3*len("line 0\n")) {
		t.Fatalf("size %d: the reader must see the log as it was when opened", log.Size())
	}
	got, _ := io.ReadAll(io.NewSectionReader(log, 0, 1<<20))
	if string(got) != "line 0\nline 1\nline 2\n" {
		t.Fatalf("read %q", got)
	}
	var prev time.Time
	for i := range 3 {
		off := int64(i*len("line 0\n") + 6) // the newline
		ts := log.Stamp(off)
		if ts.Before(times[i].Truncate(time.Millisecond)) || ts.After(opened) || ts.Before(prev) {
			t.Errorf("line %d stamped %v: written at %v, the one before stamped %v, log opened at %v", i, ts, times[i], prev, opened)
		}
		prev = ts
	}
	_ = log.Close()
	_ = pw.Close()
	<-c.done

	var s stamps
	base := time.UnixMilli(1700000000000)
	for i := range 100 * maxStamps {
		s.mark(int64(i)*10, base.Add(time.Duration(i)*time.Millisecond))
	}
	pts := s.snapshot()
	if len(pts) > maxStamps {
		t.Fatalf("%d points, more than %d", len(pts), maxStamps)
	}
	for i := 1; i < len(pts); i++ {
		if pts[i].off <= pts[i-1].off || pts[i].ms <= pts[i-1].ms {
			t.Fatalf("points out of order at %d: %+v %+v", i, pts[i-1], pts[i])
		}
	}
	// The newest output keeps exact times.
	last := 100*maxStamps - 1
	l := &ConsoleLog{pts: pts}
	for i := last - maxStamps/4; i <= last; i++ {
		if got, want := l.Stamp(int64(i)*10+5), base.Add(time.Duration(i)*time.Millisecond); !got.Equal(want) {
			t.Fatalf("write %d stamped %v, want %v", i, got, want)
		}
	}
	// Older output gets an earlier time, never a later one.
	for i := 0; i < last; i += 997 {
		if got := l.Stamp(int64(i) * 10); got.After(base.Add(time.Duration(i) * time.Millisecond)) {
			t.Fatalf("write %d stamped %v, later than it was written", i, got)
		}
	}
}

// A re-adopted VM's console appends to its log within the same limit (it used to start a new
// limit, so that each restart of the daemon could add another 4 MiB).
func TestConsoleAppendKeepsLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	c, err := startConsole(bytes.NewReader(bytes.Repeat([]byte("x"), ConsoleLogLimit-100)), path)
	if err != nil {
		t.Fatal(err)
	}
	<-c.done
	for range 3 {
		c, err := appendConsole(bytes.NewReader(bytes.Repeat([]byte("y"), ConsoleLogLimit)), path)
		if err != nil {
			t.Fatal(err)
		}
		<-c.done
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if max := int64(ConsoleLogLimit + 3*len(limitMarker)); st.Size() > max {
		t.Fatalf("log is %d bytes after three adoptions, limit %d", st.Size(), ConsoleLogLimit)
	}
}
