package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cellhq/cell/internal/vmm"
)

// memLog is a console log in memory: the guest's bytes, each line stamped a millisecond after the
// one before (from base), as vmm.ConsoleLog stamps a console written a line per millisecond.
type memLog struct {
	*bytes.Reader
	newlines []int64 // offsets of the '\n's
	base     time.Time
}

func newMemLog(b []byte, base time.Time) *memLog {
	m := &memLog{Reader: bytes.NewReader(b), base: base}
	for i, c := range b {
		if c == '\n' {
			m.newlines = append(m.newlines, int64(i))
		}
	}
	return m
}

func (m *memLog) Stamp(off int64) time.Time {
	i := sort.Search(len(m.newlines), func(i int) bool { return m.newlines[i] >= off })
	return m.base.Add(time.Duration(i) * time.Millisecond)
}

// worstLogs are 4 MiB consoles a hostile guest might print, each the most expensive of its kind
// for the old handler (an entry per line, twice) or for JSON (six bytes per input byte).
func worstLogs() map[string][]byte {
	limit := vmm.ConsoleLogLimit
	return map[string][]byte{
		"one-byte lines":     bytes.Repeat([]byte("a\n"), limit/2),
		"control characters": bytes.Repeat([]byte("\x01\x02\x03\x1b\n"), limit/5),
		"invalid UTF-8":      bytes.Repeat([]byte{0xff, 0xfe, '\n'}, limit/3),
		"one long line":      bytes.Repeat([]byte{0x01}, limit),
		"empty lines":        bytes.Repeat([]byte("\n"), limit),
	}
}

// staticLog stamps every byte with one time (keeps the cost of the test's stamps out of the
// measurement).
type staticLog struct{ *bytes.Reader }

func (staticLog) Stamp(int64) time.Time { return time.Unix(1700000000, 0) }

// allocated returns the bytes allocated while f ran (all goroutines; the test runs alone).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A 4 MiB console of any content costs the daemon a bounded, small amount of memory and gives a
// bounded answer (the old handler: ~2 GB allocated and a 328 MB answer for one call).
func TestLogsBoundedMemory(t *testing.T) {
	const maxAlloc = 8 << 20
	for name, content := range worstLogs() {
		t.Run(name, func(t *testing.T) {
			var out countingWriter
			out.w = io.Discard
			var err error
			n := allocated(func() {
				err = writeLogs(&out, staticLog{bytes.NewReader(content)}, logQuery{start: -1, limit: MaxLogEntries})
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %.1f MiB allocated, %.1f MiB answer", name, float64(n)/(1<<20), float64(out.n)/(1<<20))
			if n > maxAlloc {
				t.Errorf("one call allocated %d bytes, more than %d", n, maxAlloc)
			}
			if out.n > 2*maxLogAnswer+4*maxLogLine*6 {
				t.Errorf("answer of %d bytes", out.n)
			}
		})
	}
}

// BenchmarkLogs reports the memory one call costs on each worst-case console (alloc-MiB/op).
func BenchmarkLogs(b *testing.B) {
	for name, content := range worstLogs() {
		b.Run(strings.ReplaceAll(name, " ", "-"), func(b *testing.B) {
			var total uint64
			for b.Loop() {
				total += allocated(func() {
					_ = writeLogs(io.Discard, staticLog{bytes.NewReader(content)}, logQuery{start: -1, limit: MaxLogEntries})
				})
			}
			b.ReportMetric(float64(total)/float64(b.N)/(1<<20), "alloc-MiB/op")
		})
	}
}

type logsAnswer struct {
	Logs []struct {
		Timestamp time.Time `json:"timestamp"`
		Line      string    `json:"line"`
	} `json:"logs"`
	LogEntries []struct {
		Timestamp time.Time         `json:"timestamp"`
		Level     string            `json:"level"`
		Message   string            `json:"message"`
		Fields    map[string]string `json:"fields"`
	} `json:"logEntries"`
}

func readLogs(t *testing.T, src logSource, q logQuery) logsAnswer {
	t.Helper()
	var out bytes.Buffer
	if err := writeLogs(&out, src, q); err != nil {
		t.Fatal(err)
	}
	if !json.Valid(out.Bytes()) {
		t.Fatalf("the answer is not valid JSON: %.200q", out.String())
	}
	var a logsAnswer
	if err := json.Unmarshal(out.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	if len(a.Logs) != len(a.LogEntries) {
		t.Fatalf("%d logs, %d logEntries", len(a.Logs), len(a.LogEntries))
	}
	for i, l := range a.Logs {
		e := a.LogEntries[i]
		if l.Line != e.Message || !l.Timestamp.Equal(e.Timestamp) || e.Level != "info" || e.Fields["source"] != "console" {
			t.Fatalf("entry %d: logs %+v, logEntries %+v", i, l, e)
		}
	}
	return a
}

// start and limit mean what they mean on E2B: lines stamped at or after start (unix ms), oldest
// first, at most limit; a client following the log asks again from the last stamp plus one.
func TestLogsStartAndLimit(t *testing.T) {
	var b strings.Builder
	for i := range 2500 {
		fmt.Fprintf(&b, "line %d\r\n", i)
	}
	base := time.UnixMilli(1700000000000)
	src := newMemLog([]byte(b.String()), base)

	a := readLogs(t, src, logQuery{start: -1, limit: MaxLogEntries})
	if len(a.Logs) != MaxLogEntries || a.Logs[0].Line != "line 0" || a.Logs[999].Line != "line 999" {
		t.Fatalf("default: %d lines, %q .. %q", len(a.Logs), a.Logs[0].Line, a.Logs[len(a.Logs)-1].Line)
	}
	a = readLogs(t, src, logQuery{start: -1, limit: 3})
	if len(a.Logs) != 3 || a.Logs[2].Line != "line 2" {
		t.Fatalf("limit 3: %+v", a.Logs)
	}
	if a = readLogs(t, src, logQuery{start: -1, limit: 0}); len(a.Logs) != 0 {
		t.Fatalf("limit 0: %d lines", len(a.Logs))
	}
	// Following: each answer starts after the last one's stamp, and together they are the log.
	var got []string
	start := int64(-1)
	for range 10 {
		a := readLogs(t, src, logQuery{start: start, limit: 700})
		if len(a.Logs) == 0 {
			break
		}
		for _, l := range a.Logs {
			got = append(got, l.Line)
		}
		start = a.Logs[len(a.Logs)-1].Timestamp.UnixMilli() + 1
	}
	if len(got) != 2500 || got[0] != "line 0" || got[2499] != "line 2499" {
		t.Fatalf("following the log: %d lines", len(got))
	}
	for i, l := range got {
		if l != fmt.Sprintf("line %d", i) {
			t.Fatalf("line %d is %q", i, l)
		}
	}
	a = readLogs(t, src, logQuery{start: base.Add(2400 * time.Millisecond).UnixMilli(), limit: MaxLogEntries})
	if len(a.Logs) != 100 || a.Logs[0].Line != "line 2400" {
		t.Fatalf("start at line 2400: %d lines from %q", len(a.Logs), a.Logs[0].Line)
	}
	if a = readLogs(t, src, logQuery{start: base.Add(time.Hour).UnixMilli(), limit: MaxLogEntries}); len(a.Logs) != 0 {
		t.Fatalf("start after the end: %d lines", len(a.Logs))
	}
}

// Whatever the guest prints comes out as valid JSON strings: invalid UTF-8 as U+FFFD, control
// characters escaped, a long line in pieces of at most maxLogLine bytes cut between characters.
func TestLogsGuestBytes(t *testing.T) {
	long := strings.Repeat("é", maxLogLine) // 2 bytes each: pieces must not split one
	content := "ok\n\xff\xfebad\n\x00\x1b[31mred\x1b[0m\n" + long + "\nend"
	a := readLogs(t, staticLog{bytes.NewReader([]byte(content))}, logQuery{start: -1, limit: MaxLogEntries})
	var lines []string
	for _, l := range a.Logs {
		lines = append(lines, l.Line)
	}
	if len(lines) < 6 || lines[0] != "ok" || lines[1] != "\ufffd\ufffdbad" || lines[2] != "\x00\x1b[31mred\x1b[0m" || lines[len(lines)-1] != "end" {
		t.Fatalf("lines: %.300q", lines)
	}
	var joined string
	for _, l := range lines[3 : len(lines)-1] {
		if len(l) > maxLogLine || !utf8.ValidString(l) || strings.ContainsRune(l, utf8.RuneError) {
			t.Fatalf("a piece of the long line: %d bytes, valid %v", len(l), utf8.ValidString(l))
		}
		joined += l
	}
	if joined != long {
		t.Fatalf("the long line's pieces do not make it up (%d bytes, want %d)", len(joined), len(long))
	}
}

func TestLogsQueryErrors(t *testing.T) {
	srv, key, _ := setup(t)
	for _, c := range []struct{ query, mention string }{
		{"start=-1", "start"}, {"start=soon", "start"}, {"limit=-1", "limit"}, {"limit=1001", "limit"}, {"limit=x", "limit"},
	} {
		a := call(t, srv, "GET", "/sandboxes/abc123/logs?"+c.query, key, "", nil)
		if msg, _ := a.body["message"].(string); a.status != 400 || !strings.HasPrefix(msg, c.mention+":") {
			t.Errorf("%s: %d %s", c.query, a.status, a.raw)
		}
	}
	if a := call(t, srv, "GET", "/sandboxes/abc123/logs?start=0&limit=10", key, "", nil); a.status != 404 {
		t.Errorf("unknown sandbox: %d %s", a.status, a.raw)
	}
}

// FuzzLogs: whatever the guest printed, the answer is valid JSON, bounded, with the same lines in
// logs and logEntries, each at most maxLogLine bytes, and no more than limit of them.
func FuzzLogs(f *testing.F) {
	f.Add([]byte("boot\r\nok\n"), int64(-1), uint16(1000))
	f.Add([]byte("\xff\xfe\x00\x1b[0m\n\n\nlast"), int64(0), uint16(2))
	f.Add(bytes.Repeat([]byte("é"), 3000), int64(-1), uint16(5))
	f.Add([]byte(strings.Repeat("x", maxLogLine-4)+"\xe2\x82\xac\n"), int64(1700000000001), uint16(0))
	f.Fuzz(func(t *testing.T, content []byte, start int64, limit uint16) {
		q := logQuery{start: max(start, -1), limit: int(limit) % (MaxLogEntries + 1)}
		a := readLogs(t, newMemLog(content, time.UnixMilli(1700000000000)), q)
		if len(a.Logs) > q.limit {
			t.Fatalf("%d lines for limit %d", len(a.Logs), q.limit)
		}
		for _, l := range a.Logs {
			if len(l.Line) > maxLogLine*3 { // U+FFFD is 3 bytes for each invalid byte
				t.Fatalf("a line of %d bytes", len(l.Line))
			}
			if q.start >= 0 && l.Timestamp.UnixMilli() < q.start {
				t.Fatalf("a line stamped %v before start %d", l.Timestamp, q.start)
			}
		}
	})
}
