package channel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	magic = "CELL1"
	// maxLine bounds a handshake line; longer input is skipped as garbage.
	maxLine = 64
	// maxHandshakeBytes bounds what the host reads from the guest before the session starts.
	maxHandshakeBytes = 1 << 20
	// PingInterval is how often the host pings a guest that has not answered yet.
	PingInterval = 2 * time.Millisecond
	// SeedWords is how many 64-bit words of host randomness each handshake carries (one SEED line
	// each): 256 bits, a full key for the guest kernel's generator.
	SeedWords = 4
	// MaxInit bounds the init payload a handshake may carry (see GuestHooks.Init).
	MaxInit = 4 << 20
	// maxInitError bounds the message of a refused init that the host reads from the guest.
	maxInitError = 4096
)

// GuestHooks are what the guest does with the host's state that comes with every handshake. A
// guest restored or resumed from a snapshot wakes up with the clock and the random generator's
// state it was saved with; both are put right before the guest says READY, so before the host
// can run anything in it.
type GuestHooks struct {
	Clock func(time.Time) // the host's wall clock
	Seed  func([]byte)    // SeedWords*8 bytes of fresh host randomness
	// Init applies the host's init payload (at most MaxInit bytes), when the handshake carries
	// one: a new sandbox's identity, settled before the host can run anything in it, without a
	// request of its own. What it returns is the host's error (as ErrInitRefused); the session
	// starts either way.
	Init func([]byte) error
}

// ErrHandshake is wrapped by every handshake failure other than cancellation.
var ErrHandshake = errors.New("channel handshake failed")

// ErrInitRefused is wrapped by Connect's error when the guest could not apply the init payload.
var ErrInitRefused = errors.New("the guest refused its init")

// lineReader reads '\n'-terminated lines of at most maxLine bytes, skipping longer ones, and
// counts what it consumed.
type lineReader struct {
	r     *bufio.Reader
	read  int
	limit int // 0 for none
}

func (lr *lineReader) next() (string, error) {
	var line []byte
	skipping := false
	for {
		b, err := lr.r.ReadByte()
		if err != nil {
			return "", err
		}
		lr.read++
		if lr.limit > 0 && lr.read > lr.limit {
			return "", fmt.Errorf("%w: peer sent more than %d bytes without completing it", ErrHandshake, lr.limit)
		}
		if b == '\n' {
			if skipping {
				skipping = false
				line = line[:0]
				continue
			}
			return string(line), nil
		}
		if skipping {
			continue
		}
		if len(line) >= maxLine {
			skipping = true
			continue
		}
		line = append(line, b)
	}
}

// lineBuffered says whether a whole line is already buffered.
func (lr *lineReader) lineBuffered() bool {
	buf, _ := lr.r.Peek(lr.r.Buffered())
	return bytes.IndexByte(buf, '\n') >= 0
}

// parse splits "CELL1 VERB n"; ok is false for anything else.
func parse(line string) (verb string, n uint64, ok bool) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != magic {
		return "", 0, false
	}
	n, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil || line != magic+" "+f[1]+" "+f[2] {
		return "", 0, false
	}
	return f[1], n, true
}

func format(verb string, n uint64) []byte {
	return []byte(magic + " " + verb + " " + strconv.FormatUint(n, 10) + "\n")
}

// rwc joins a buffered reader (holding bytes read past the handshake) with the stream's writes
// and close.
type rwc struct {
	io.Reader
	io.Writer
	io.Closer
}

// hostHandshake runs the host side on conn, sending init (if not nil) for GuestHooks.Init. It
// closes nothing; the caller owns conn and closes it to abort (ctx cancellation does so through
// the caller).
func hostHandshake(ctx context.Context, conn io.ReadWriter, init []byte) (*bufio.Reader, error) {
	if len(init) > MaxInit {
		return nil, fmt.Errorf("%w: the init payload is %d bytes, over %d", ErrInitRefused, len(init), MaxInit)
	}
	br := bufio.NewReaderSize(conn, 4096)
	lr := &lineReader{r: br, limit: maxHandshakeBytes}

	var writeMu sync.Mutex
	stopPing := make(chan struct{})
	pingDone := make(chan error, 1)
	go func() {
		t := time.NewTicker(PingInterval)
		defer t.Stop()
		for n := uint64(1); ; n++ {
			writeMu.Lock()
			_, err := conn.Write(format("PING", n))
			writeMu.Unlock()
			if err != nil {
				pingDone <- err
				return
			}
			select {
			case <-stopPing:
				pingDone <- nil
				return
			case <-ctx.Done():
				pingDone <- nil
				return
			case <-t.C:
			}
		}
	}()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		close(stopPing)
		return <-pingDone
	}
	defer func() { _ = stop() }()

	var goN uint64
	sentGo := false
	var refused error
	applied := false
	for {
		line, err := lr.next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, ErrHandshake) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: reading from guest: %w", ErrHandshake, err)
		}
		verb, n, ok := parse(line)
		if !ok {
			continue
		}
		switch {
		case verb == "PONG" && !sentGo:
			if err := stop(); err != nil {
				return nil, fmt.Errorf("%w: pinging guest: %w", ErrHandshake, err)
			}
			goN = n
			sentGo = true
			// The host's clock and fresh randomness go with every GO (see GuestHooks).
			var seed [SeedWords * 8]byte
			if _, err := rand.Read(seed[:]); err != nil {
				return nil, fmt.Errorf("%w: host randomness: %w", ErrHandshake, err)
			}
			msg := format("TIME", uint64(time.Now().UnixNano()))
			for i := 0; i < SeedWords; i++ {
				msg = append(msg, format("SEED", binary.BigEndian.Uint64(seed[8*i:]))...)
			}
			if init != nil {
				// The payload ends with a newline of its own, which the guest skips as an
				// empty line: a guest that knows no INIT skips the payload as lines it cannot
				// parse and still finds GO at the start of a line.
				msg = append(append(append(msg, format("INIT", uint64(len(init)))...), init...), '\n')
			}
			msg = append(msg, format("GO", goN)...)
			if _, err := conn.Write(msg); err != nil {
				return nil, fmt.Errorf("%w: sending go: %w", ErrHandshake, err)
			}
		case verb == "REFUSED" && sentGo && init != nil && refused == nil:
			if n > maxInitError {
				return nil, fmt.Errorf("%w: the guest's refusal is %d bytes, over %d", ErrHandshake, n, maxInitError)
			}
			why := make([]byte, n)
			if _, err := io.ReadFull(br, why); err != nil {
				return nil, fmt.Errorf("%w: reading the guest's refusal: %w", ErrHandshake, err)
			}
			lr.read += int(n)
			refused = fmt.Errorf("%w: %s", ErrInitRefused, strings.ToValidUTF8(string(why), "?"))
		case verb == "APPLIED" && sentGo && init != nil && n == uint64(len(init)):
			applied = true
		case verb == "READY" && sentGo && n == goN:
			if refused != nil {
				return nil, refused
			}
			if init != nil && !applied {
				// An envd that does not know INIT skips it as a line it cannot parse.
				return nil, fmt.Errorf("%w: the guest neither applied nor refused it (an envd older than the host?)", ErrInitRefused)
			}
			return br, nil
		}
	}
}

// guestHandshake runs the guest side: it answers pings until told to go, and hands the host's
// clock, randomness and init payload (sent with GO) to hooks.
func guestHandshake(conn io.ReadWriter, hooks GuestHooks) (*bufio.Reader, error) {
	br := bufio.NewReaderSize(conn, 4096)
	lr := &lineReader{r: br}
	var seed, init []byte
	for {
		line, err := lr.next()
		if err != nil {
			return nil, fmt.Errorf("%w: reading from host: %w", ErrHandshake, err)
		}
		verb, n, ok := parse(line)
		if !ok {
			continue
		}
		switch verb {
		case "PING":
			// Pings pile up while a restored guest wakes (the host sends one every
			// PingInterval): only the newest is answered, as each answer is a write to the
			// port, dear under TCG. The host takes any PONG.
			if lr.lineBuffered() {
				continue
			}
			if _, err := conn.Write(format("PONG", n)); err != nil {
				return nil, fmt.Errorf("%w: answering ping: %w", ErrHandshake, err)
			}
		case "TIME":
			if hooks.Clock != nil && n <= math.MaxInt64 {
				hooks.Clock(time.Unix(0, int64(n)))
			}
		case "SEED":
			if len(seed) < SeedWords*8 { // more is the host's mistake (or noise): ignored
				seed = binary.BigEndian.AppendUint64(seed, n)
			}
		case "INIT":
			if n > MaxInit {
				return nil, fmt.Errorf("%w: the host's init payload is %d bytes, over %d", ErrHandshake, n, MaxInit)
			}
			init = make([]byte, n)
			if _, err := io.ReadFull(br, init); err != nil {
				return nil, fmt.Errorf("%w: reading the init payload: %w", ErrHandshake, err)
			}
		case "GO":
			if hooks.Seed != nil && len(seed) > 0 {
				hooks.Seed(seed)
			}
			var reply []byte
			if init != nil {
				var err error
				if hooks.Init == nil {
					err = errors.New("this guest takes no init payload")
				} else {
					err = hooks.Init(init)
				}
				if err != nil {
					why := []byte(err.Error())
					if len(why) > maxInitError {
						why = why[:maxInitError]
					}
					reply = append(format("REFUSED", uint64(len(why))), why...)
				} else {
					reply = format("APPLIED", uint64(len(init)))
				}
			}
			if _, err := conn.Write(append(reply, format("READY", n)...)); err != nil {
				return nil, fmt.Errorf("%w: sending ready: %w", ErrHandshake, err)
			}
			return br, nil
		}
	}
}
