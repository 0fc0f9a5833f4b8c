package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/pkg/e2bapi"
	"github.com/cellhq/cell/pkg/envd"
	"github.com/cellhq/cell/pkg/envd/command"
	"github.com/cellhq/cell/proto/filesystem/filesystemconnect"
	"github.com/cellhq/cell/proto/process/processconnect"
)

// Client talks to one `cell serve`.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:3000
	APIKey  string
	HTTP    *http.Client
}

// New returns a client for baseURL with apiKey.
func New(baseURL, apiKey string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), APIKey: apiKey, HTTP: &http.Client{}}
}

// Error is an API error answer.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message) }

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) (http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-API-KEY", c.APIKey)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 300 {
		var e e2bapi.Error
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(raw, &e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(raw))
		}
		return resp.Header, &Error{Status: resp.StatusCode, Message: e.Message}
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.Header, fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// CreateOptions are a new sandbox's settings.
type CreateOptions struct {
	Template string
	Timeout  time.Duration
	Metadata map[string]string
	Envs     map[string]string
	// Internet false: no connection leaves the sandbox except to AllowOut (nil: on).
	Internet *bool
	Network  *Network
	// DiskSizeMB is the sandbox's disk in MiB (Cell's own; 0: the server's default).
	DiskSizeMB int
}

// Network is a sandbox's egress policy and public-traffic setting.
type Network = e2bapi.NetworkConfig

// Info describes a sandbox. Create, Connect and Fork fill in what E2B's create answer holds
// (ids, tokens); Get and List what its details hold (all but TrafficAccessToken).
type Info struct {
	SandboxID       string
	TemplateID      string
	EnvdVersion     string
	EnvdAccessToken string
	// TrafficAccessToken must accompany requests to the sandbox's ports when it was created
	// with AllowPublicTraffic false.
	TrafficAccessToken string
	StartedAt          time.Time
	EndAt              time.Time
	State              string
	CPUCount           int
	MemoryMB           int
	DiskSizeMB         int
	Metadata           map[string]string
}

// fromSandbox is the Info of a create (connect, fork) answer.
func fromSandbox(s e2bapi.Sandbox) Info {
	return Info{SandboxID: s.SandboxID, TemplateID: s.TemplateID, EnvdVersion: s.EnvdVersion,
		EnvdAccessToken: deref(s.EnvdAccessToken), TrafficAccessToken: deref(s.TrafficAccessToken)}
}

// fromDetail is the Info of a sandbox's details.
func fromDetail(d e2bapi.SandboxDetail) Info {
	return Info{SandboxID: d.SandboxID, TemplateID: d.TemplateID, EnvdVersion: d.EnvdVersion,
		EnvdAccessToken: deref(d.EnvdAccessToken), StartedAt: d.StartedAt, EndAt: d.EndAt, State: d.State,
		CPUCount: d.CPUCount, MemoryMB: d.MemoryMB, DiskSizeMB: d.DiskSizeMB, Metadata: d.Metadata}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// seconds is d in whole seconds, rounded up, for a JSON field.
func seconds(d time.Duration) *int {
	n := int((d + time.Second - 1) / time.Second)
	return &n
}

// Create starts a sandbox.
func (c *Client) Create(ctx context.Context, o CreateOptions) (Info, error) {
	if o.Template == "" {
		o.Template = "base"
	}
	body := e2bapi.NewSandbox{TemplateID: o.Template, Metadata: o.Metadata, EnvVars: o.Envs,
		AllowInternetAccess: o.Internet, Network: o.Network}
	if o.Timeout > 0 {
		body.Timeout = seconds(o.Timeout)
	}
	if o.DiskSizeMB != 0 {
		body.DiskSizeMB = &o.DiskSizeMB
	}
	var s e2bapi.Sandbox
	_, err := c.do(ctx, http.MethodPost, "/sandboxes", body, &s)
	return fromSandbox(s), err
}

// NetworkUpdate changes a running sandbox's egress policy; nil fields stay as they are.
type NetworkUpdate struct {
	Internet *bool
	AllowOut *[]string
	DenyOut  *[]string
}

// UpdateNetwork changes a sandbox's egress policy; new connections follow it at once.
func (c *Client) UpdateNetwork(ctx context.Context, id string, u NetworkUpdate) error {
	body := e2bapi.NetworkUpdate{AllowInternetSnake: u.Internet, AllowOut: u.AllowOut, DenyOut: u.DenyOut}
	_, err := c.do(ctx, http.MethodPut, "/sandboxes/"+url.PathEscape(id)+"/network", body, nil)
	return err
}

// Get describes a sandbox.
func (c *Client) Get(ctx context.Context, id string) (Info, error) {
	var d e2bapi.SandboxDetail
	_, err := c.do(ctx, http.MethodGet, "/sandboxes/"+url.PathEscape(id), nil, &d)
	return fromDetail(d), err
}

// List returns every running sandbox of the key's team.
func (c *Client) List(ctx context.Context) ([]Info, error) {
	var all []Info
	token := ""
	for {
		q := url.Values{"limit": {"100"}}
		if token != "" {
			q.Set("nextToken", token)
		}
		var page []e2bapi.SandboxDetail
		h, err := c.do(ctx, http.MethodGet, "/v2/sandboxes?"+q.Encode(), nil, &page)
		if err != nil {
			return nil, err
		}
		for _, d := range page {
			all = append(all, fromDetail(d))
		}
		if token = h.Get("X-Next-Token"); token == "" {
			return all, nil
		}
	}
}

// Kill stops a sandbox.
func (c *Client) Kill(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/sandboxes/"+url.PathEscape(id), nil, nil)
	return err
}

// SetTimeout makes the sandbox end d from now.
func (c *Client) SetTimeout(ctx context.Context, id string, d time.Duration) error {
	n := int(d / time.Second)
	_, err := c.do(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/timeout", e2bapi.TimeoutRequest{Timeout: &n}, nil)
	return err
}

// Sandbox is a connection to one sandbox's envd through `cell serve`.
type Sandbox struct {
	ID      string
	Process processconnect.ProcessClient
	FS      filesystemconnect.FilesystemClient
	c       *Client
	token   string
	http    *http.Client
}

// headerTransport adds the routing and access headers to every envd request.
type headerTransport struct {
	base  http.RoundTripper
	id    string
	token string
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("E2b-Sandbox-Id", t.id)
	r.Header.Set("E2b-Sandbox-Port", "49983")
	if t.token != "" {
		r.Header.Set(envd.AccessTokenHeader, t.token)
	}
	return t.base.RoundTrip(r)
}

// Connect returns a handle on a running sandbox.
func (c *Client) Connect(ctx context.Context, id string) (*Sandbox, error) {
	var s e2bapi.Sandbox
	if _, err := c.do(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/connect", e2bapi.ConnectRequest{}, &s); err != nil {
		return nil, err
	}
	info := fromSandbox(s)
	base := c.HTTP.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	hc := &http.Client{Transport: headerTransport{base: base, id: id, token: info.EnvdAccessToken}}
	return &Sandbox{
		ID: id, c: c, token: info.EnvdAccessToken, http: hc,
		Process: processconnect.NewProcessClient(hc, c.BaseURL, processOptions()...),
		FS:      filesystemconnect.NewFilesystemClient(hc, c.BaseURL, filesystemOptions()...),
	}, nil
}

// AsUser sets the user a request to envd runs as (E2B's Basic auth convention).
func AsUser[T any](req *connect.Request[T], user string) *connect.Request[T] {
	return command.AsUser(req, user)
}

// ExecResult is how a command ended.
type ExecResult = command.Result

// Exec runs cmd (through bash -l -c, as E2B's SDKs do) and streams its output.
func (s *Sandbox) Exec(ctx context.Context, cmd, user string, envs map[string]string, stdout, stderr io.Writer) (ExecResult, error) {
	return s.ExecInput(ctx, cmd, user, envs, nil, stdout, stderr)
}

// ExecInput is Exec with stdin (when not nil) copied to the command's standard input, which is
// closed at stdin's end. The copy stops when the command ends; a read of stdin in progress then
// is not waited for.
func (s *Sandbox) ExecInput(ctx context.Context, cmd, user string, envs map[string]string, stdin io.Reader, stdout, stderr io.Writer) (ExecResult, error) {
	return s.run(ctx, command.Spec{Cmd: "/bin/bash", Args: []string{"-l", "-c", cmd}, Env: envs, User: user}, stdin, stdout, stderr)
}

// ExecArgv runs argv[0] with the arguments argv[1:] (no shell) and streams its output.
func (s *Sandbox) ExecArgv(ctx context.Context, argv []string, user string, stdout, stderr io.Writer) (ExecResult, error) {
	if len(argv) == 0 {
		return ExecResult{}, errors.New("no command")
	}
	return s.run(ctx, command.Spec{Cmd: argv[0], Args: argv[1:], User: user}, nil, stdout, stderr)
}

// run runs spec to its end and waits for envd's trailer with it. Output a writer refuses is
// dropped, and the command runs on: a client's output is the caller's business.
func (s *Sandbox) run(ctx context.Context, spec command.Spec, stdin io.Reader, stdout, stderr io.Writer) (ExecResult, error) {
	return command.Run(ctx, s.Process, spec, stdin, lenient{stdout}, lenient{stderr}, command.Options{})
}

// lenient passes writes on and reports each one done.
type lenient struct{ w io.Writer }

func (l lenient) Write(p []byte) (int, error) {
	_, _ = l.w.Write(p)
	return len(p), nil
}

func (s *Sandbox) filesURL(path, user string) string {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("username", user)
	}
	return s.c.BaseURL + "/files?" + q.Encode()
}

// Upload writes r to path in the sandbox.
func (s *Sandbox) Upload(ctx context.Context, path, user string, r io.Reader) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.filesURL(path, user), r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &Error{Status: resp.StatusCode, Message: strings.TrimSpace(string(msg))}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// Download copies the file at path in the sandbox to w.
func (s *Sandbox) Download(ctx context.Context, path, user string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.filesURL(path, user), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept-Encoding", "identity") // raw bytes: no compression work in the guest
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, &Error{Status: resp.StatusCode, Message: strings.TrimSpace(string(msg))}
	}
	return io.Copy(w, resp.Body)
}

// Pause saves and stops a sandbox (its RAM too when memory).
func (c *Client) Pause(ctx context.Context, id string, memory bool) error {
	_, err := c.do(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/pause", e2bapi.PauseRequest{Memory: &memory}, nil)
	return err
}

// Resume starts a paused sandbox again (E2B's connect: a running one is left as it is).
func (c *Client) Resume(ctx context.Context, id string, timeout time.Duration) error {
	var body e2bapi.ConnectRequest
	if timeout > 0 {
		n := int(timeout / time.Second)
		body.Timeout = &n
	}
	_, err := c.do(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/connect", body, nil)
	return err
}

// Snapshot is a snapshot of a sandbox: a template others can be created from.
type Snapshot = e2bapi.Snapshot

// Snapshot saves a running sandbox (it keeps running) as a template named name (optional).
func (c *Client) Snapshot(ctx context.Context, id, name string) (Snapshot, error) {
	var s Snapshot
	_, err := c.do(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/snapshots", e2bapi.SnapshotRequest{Name: name}, &s)
	return s, err
}

// ForkResult is one fork: its sandbox, or why it failed.
type ForkResult struct {
	Sandbox *Info
	Error   *e2bapi.Error
}

// Fork starts count copies of a running sandbox (each to live timeout; 0: the default).
func (c *Client) Fork(ctx context.Context, id string, count int, timeout time.Duration) ([]ForkResult, error) {
	body := e2bapi.ForkRequest{Count: &count}
	if timeout > 0 {
		body.Timeout = seconds(timeout)
	}
	var results []e2bapi.ForkResult
	if _, err := c.do(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/fork", body, &results); err != nil {
		return nil, err
	}
	out := make([]ForkResult, len(results))
	for i, r := range results {
		out[i].Error = r.Error
		if r.Sandbox != nil {
			info := fromSandbox(*r.Sandbox)
			out[i].Sandbox = &info
		}
	}
	return out, nil
}
