package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Event is an asynchronous QMP event such as SHUTDOWN, STOP or RESUME.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// Error is an error reply from QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// ErrClosed is returned for commands on a closed connection.
var ErrClosed = errors.New("qmp: connection closed")

type message struct {
	ID     string          `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	QMP    json.RawMessage `json:"QMP"`
}

type reply struct {
	ret json.RawMessage
	err error
}

// Client is a QMP connection. Close releases it.
type Client struct {
	conn   net.Conn
	events chan Event

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan reply
	err     error // set once the reader stops
	done    chan struct{}
}

// EventBuffer is how many events are kept for a slow consumer; older ones are dropped.
const EventBuffer = 64

// Dial connects to the QMP socket at path, reads QEMU's greeting and enters command mode.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	return NewClient(ctx, conn)
}

// NewClient runs the QMP handshake on conn and takes ownership of it.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		events:  make(chan Event, EventBuffer),
		pending: map[string]chan reply{},
		done:    make(chan struct{}),
	}
	// The greeting is read synchronously, bounded by ctx.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	dec := json.NewDecoder(conn)
	var greet message
	err := dec.Decode(&greet)
	if !stop() || err != nil {
		_ = conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("qmp: reading greeting: %w", err)
	}
	if greet.QMP == nil {
		_ = conn.Close()
		return nil, errors.New("qmp: peer did not send a QMP greeting")
	}
	go c.readLoop(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("qmp: negotiating capabilities: %w", err)
	}
	return c, nil
}

func (c *Client) readLoop(dec *json.Decoder) {
	var err error
	for {
		var m message
		if err = dec.Decode(&m); err != nil {
			break
		}
		if m.Event != "" {
			select {
			case c.events <- Event{Name: m.Event, Data: m.Data}:
			default: // a consumer that does not keep up loses events, never blocks replies
			}
			continue
		}
		c.mu.Lock()
		ch, ok := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if !ok {
			continue
		}
		if m.Error != nil {
			ch <- reply{err: m.Error}
		} else {
			ch <- reply{ret: m.Return}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClosed
	} else {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.mu.Lock()
	c.err = err
	for id, ch := range c.pending {
		ch <- reply{err: err}
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.events)
	close(c.done)
}

// Execute runs command with args (nil for none) and decodes its return value into result (nil to
// discard it).
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

// AddFD hands QEMU a copy of f's descriptor under name (QMP's getfd, the descriptor passed with
// SCM_RIGHTS), for a later command to use as "fd:name". The connection must be a unix socket.
func (c *Client) AddFD(ctx context.Context, name string, f *os.File) error {
	return c.execute(ctx, "getfd", map[string]string{"fdname": name}, nil, f)
}

func (c *Client) execute(ctx context.Context, command string, args, result any, fd *os.File) error {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	c.pending[id] = ch
	c.mu.Unlock()

	req := struct {
		Execute string `json:"execute"`
		Args    any    `json:"arguments,omitempty"`
		ID      string `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp: encoding %s: %w", command, err)
	}
	c.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	if fd != nil {
		uc, ok := c.conn.(*net.UnixConn)
		if !ok {
			err = errors.New("passing a descriptor needs a unix socket")
		} else {
			_, _, err = uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(fd.Fd())), nil)
			runtime.KeepAlive(fd)
		}
	} else {
		_, err = c.conn.Write(append(b, '\n'))
	}
	_ = c.conn.SetWriteDeadline(time.Time{})
	c.writeMu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp: sending %s: %w", command, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return fmt.Errorf("qmp %s: %w", command, r.err)
		}
		if result != nil && r.ret != nil {
			if err := json.Unmarshal(r.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decoding reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Events delivers asynchronous events; it is closed when the connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the connection has ended (QEMU exited or Close was called).
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection and waits for the reader to stop. It is idempotent.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
