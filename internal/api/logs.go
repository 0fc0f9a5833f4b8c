package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/cellhq/cell/pkg/e2bapi"
)

// Bounds of GET /sandboxes/{id}/logs. The console log itself is bounded (vmm.ConsoleLogLimit),
// but a guest chooses its bytes: split into one entry per line (each entry twice, in logs and in
// logEntries) and escaped (a control byte or a byte of invalid UTF-8 is six bytes of JSON), a
// whole log built in memory cost ~500 times its size. An answer is streamed instead, at most
// MaxLogEntries lines of at most maxLogLine bytes each, and it stops after about maxLogAnswer
// bytes of JSON per array: the client asks again with start for more.
const (
	// MaxLogEntries is the largest (and the default) limit, as on E2B.
	MaxLogEntries = 1000
	// maxLogLine is the longest entry; a longer line comes in several (cut between characters).
	maxLogLine = 4096
	// maxLogAnswer is how much JSON an answer's logs array may hold before it ends early (the
	// entry that crosses it included); logEntries holds the same lines.
	maxLogAnswer = 1 << 20
	// logWriteTime bounds how long a client may take to read an answer.
	logWriteTime = time.Minute
)

// logSource is a console log being read: what vmm.ConsoleLog offers.
type logSource interface {
	io.ReaderAt
	Size() int64
	// Stamp returns when the byte at off was written.
	Stamp(off int64) time.Time
}

// logQuery is E2B's query: lines written at or after start (unix milliseconds; -1: all), oldest
// first, at most limit of them.
type logQuery struct {
	start int64
	limit int
}

func parseLogQuery(r *http.Request) (logQuery, error) {
	q := logQuery{start: -1, limit: MaxLogEntries}
	v := r.URL.Query()
	if raw := v.Get("start"); raw != "" {
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			return q, fmt.Errorf("start: %q must be a unix time in milliseconds (0 or more)", raw)
		}
		q.start = n
	}
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || n > MaxLogEntries {
			return q, fmt.Errorf("limit: %q must be an integer from 0 to %d", raw, MaxLogEntries)
		}
		q.limit = n
	}
	return q, nil
}

func (a *API) logs(w http.ResponseWriter, r *http.Request, team string) {
	q, err := parseLogQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	log, err := a.cfg.Manager.ConsoleLog(team, r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	var src logSource = emptyLog{}
	if log != nil {
		defer func() { _ = log.Close() }()
		src = log
	}
	// A client that stops reading must not hold the file and the handler forever.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(logWriteTime))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if err := writeLogs(w, src, q); err != nil {
		a.cfg.Log.Warn("writing a console log answer", "sandbox", r.PathValue("id"), "err", err)
		// The status is out: only a broken connection tells the client the answer is cut.
		panic(http.ErrAbortHandler)
	}
}

// emptyLog is the log of a sandbox without a VM (paused).
type emptyLog struct{}

func (emptyLog) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }
func (emptyLog) Size() int64                       { return 0 }
func (emptyLog) Stamp(int64) time.Time             { return time.Time{} }

// writeLogs streams E2B's {"logs": [...], "logEntries": [...]} for q: the logs array first,
// which settles the lines the answer holds, then the same lines again as logEntries. Memory is
// a line at a time, whatever the log holds; invalid UTF-8 comes out as U+FFFD.
func writeLogs(w io.Writer, src logSource, q logQuery) error {
	cw := &countingWriter{w: w}
	enc := json.NewEncoder(cw)
	enc.SetEscapeHTML(false)
	if _, err := io.WriteString(cw, `{"logs":[`); err != nil {
		return err
	}
	// The lines to send: from first (the offset where the first one starts) to end.
	var first, end int64
	n := 0
	sc := newLineScanner(src, 0, src.Size())
	for n < q.limit && cw.n < maxLogAnswer {
		at := sc.off
		line, last, ok := sc.next()
		if !ok {
			break
		}
		ts := src.Stamp(last)
		if len(line) == 0 || (q.start >= 0 && ts.UnixMilli() < q.start) {
			continue
		}
		if n == 0 {
			first = at
		} else if _, err := io.WriteString(cw, ","); err != nil {
			return err
		}
		if err := enc.Encode(e2bapi.LogLine{Timestamp: ts.UTC(), Line: string(line)}); err != nil {
			return err
		}
		n++
		end = sc.off
	}
	if err := sc.err; err != nil {
		return fmt.Errorf("reading the console log: %w", err)
	}
	if _, err := io.WriteString(cw, `],"logEntries":[`); err != nil {
		return err
	}
	// The same lines: stamps are monotonic in the offset, so all lines from first on pass the
	// start filter; empty ones are skipped again.
	sc = newLineScanner(src, first, end)
	for i := 0; i < n; {
		line, last, ok := sc.next()
		if !ok {
			break
		}
		if len(line) == 0 {
			continue
		}
		if i > 0 {
			if _, err := io.WriteString(cw, ","); err != nil {
				return err
			}
		}
		e := e2bapi.LogEntry{Timestamp: src.Stamp(last).UTC(), Level: "info", Message: string(line), Fields: e2bapi.LogFields{Source: "console"}}
		if err := enc.Encode(e); err != nil {
			return err
		}
		i++
	}
	if err := sc.err; err != nil {
		return fmt.Errorf("reading the console log: %w", err)
	}
	_, err := io.WriteString(cw, "]}\n")
	return err
}

// countingWriter counts what goes through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// lineScanner splits bytes [from, to) of a log into lines of at most maxLogLine bytes, without
// their "\n" or "\r\n". A longer line comes in pieces, cut between UTF-8 characters.
type lineScanner struct {
	br      *bufio.Reader
	off     int64  // offset of the next byte
	carry   []byte // the start of a character the last piece's end cut
	scratch []byte
	err     error // a read error other than the end
}

func newLineScanner(src io.ReaderAt, from, to int64) *lineScanner {
	// Pieces are the buffer at most, plus a carried character's start.
	size := maxLogLine - utf8.UTFMax
	return &lineScanner{br: bufio.NewReaderSize(io.NewSectionReader(src, from, to-from), size), off: from}
}

// next returns the next line (valid until the following call) and the offset of its last byte
// (its newline's, when it has one); false at the end.
func (s *lineScanner) next() (line []byte, last int64, ok bool) {
	buf, err := s.br.ReadSlice('\n')
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		s.err = err
		return nil, 0, false
	}
	if len(buf) == 0 && len(s.carry) == 0 {
		return nil, 0, false
	}
	s.off += int64(len(buf))
	last = s.off - 1
	line = buf
	if err == nil {
		line = buf[:len(buf)-1]
	}
	if len(s.carry) > 0 {
		s.scratch = append(append(s.scratch[:0], s.carry...), line...)
		line, s.carry = s.scratch, s.carry[:0]
	}
	switch err {
	case nil:
		line = bytes.TrimSuffix(line, []byte("\r"))
	case bufio.ErrBufferFull:
		cut := runeCut(line)
		s.carry = append(s.carry, line[cut:]...)
		line = line[:cut]
	}
	return line, last, true
}

// runeCut returns where to cut buf so that a UTF-8 character split by its end goes whole into the
// next piece.
func runeCut(buf []byte) int {
	for i := len(buf) - 1; i > 0 && i >= len(buf)-utf8.UTFMax; i-- {
		if utf8.RuneStart(buf[i]) {
			if !utf8.FullRune(buf[i:]) {
				return i
			}
			break
		}
	}
	return len(buf)
}
