package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/cellhq/cell/pkg/envd"
	"github.com/cellhq/cell/pkg/envd/command"
)

// VM is a build's running machine.
type VM interface {
	Run(ctx context.Context, spec command.Spec, stdin io.Reader, stdout, stderr io.Writer, onStart func(pid uint32)) (command.Result, error)
	Init(ctx context.Context, req envd.InitRequest) error
	Close() error
}

// Machines starts build VMs from snapshots and keeps their states as layers.
type Machines interface {
	// Start starts a VM from the snapshot named from (a template's or a layer's), with internet
	// access.
	Start(ctx context.Context, from string, cpus, memoryMiB int) (VM, error)
	// Save keeps vm's state as team's layer named name, with meta beside it, and returns the
	// name it was saved under: another one when a layer of that name exists (a forced step
	// makes a new layer and leaves the cached one alone). vm goes on running.
	Save(ctx context.Context, vm VM, name, team string, meta []byte) (string, error)
	// Layer returns the meta of the layer named name; false when there is no whole layer of
	// that name.
	Layer(name string) ([]byte, bool)
}

// Locker is a Machines whose layers other processes may build too: Lock holds layer name's
// lock across processes until the returned func is called.
type Locker interface {
	Lock(ctx context.Context, name string) (unlock func(), err error)
}

// LayerPrefix starts every layer's snapshot name: names a user cannot give (see IsLayer).
const LayerPrefix = "layer-"

// LayerName is the snapshot name of the layer whose key is key.
func LayerName(key string) string { return LayerPrefix + key[:32] }

// IsLayer says whether a snapshot name is a build layer's.
func IsLayer(name string) bool { return strings.HasPrefix(name, LayerPrefix) }

// State is what a layer leaves to the steps after it and to the sandboxes of a template: the
// user commands run as, their working directory and environment.
type State struct {
	User    string            `json:"user"`
	Workdir string            `json:"workdir"`
	Env     map[string]string `json:"env,omitempty"`
}

// BaseState is the state of Cell's base image: commands run as user in its home.
func BaseState() State { return State{User: "user", Workdir: "/home/user"} }

// Log levels, E2B's words.
const (
	LevelDebug = "debug"
	LevelInfo  = "info"
	LevelWarn  = "warn"
	LevelError = "error"
)

// Logger receives a build's log: level, the step it belongs to ("base", a 1-based step number,
// "finalize") and one line.
type Logger func(level, step, msg string)

// Files opens the upload (a gzipped tar) of a COPY step's files by their hash.
type Files func(hash string) (io.ReadCloser, error)

// Job is one build.
type Job struct {
	// Team owns the build and its layers.
	Team string
	Spec Spec
	// Base is the snapshot the build starts from, BaseState what its sandboxes run as, BaseKey
	// the key of that first layer (see BaseKey).
	Base      string
	BaseState State
	BaseKey   string
	CPUs      int
	MemoryMiB int
	Files     Files
	Log       Logger
	// MinFreeDiskMiB is the free disk the template gets after the steps (E2B's
	// minFreeDiskMb; 0: as it is).
	MinFreeDiskMiB int
	// ReadyTimeout bounds the wait for the ready command (0: DefaultReadyTimeout).
	ReadyTimeout time.Duration
}

// Build timings and defaults, E2B's.
const (
	DefaultReadyTimeout = 10 * time.Minute
	readyInterval       = time.Second
	// DefaultReadyCmd is the ready command of a start command that comes without one.
	DefaultReadyCmd = "sleep 20"
)

// Result is a finished build: the snapshot sandboxes of the template start from, and what
// they run as.
type Result struct {
	Snapshot      string
	State         State
	Cached, Built int
}

// StepError is a failed build: the step it failed at ("base", a 1-based step number or
// "finalize") and why.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("step %s: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// layerMeta is kept beside a layer: the state its steps left.
type layerMeta struct {
	State State `json:"state"`
}

// EncodeLayer is the meta a layer leaving st is saved with (Machines.Save).
func EncodeLayer(st State) ([]byte, error) { return json.Marshal(layerMeta{State: st}) }

// DecodeLayer is the state a layer's meta records.
func DecodeLayer(meta []byte) (State, error) {
	var lm layerMeta
	err := json.Unmarshal(meta, &lm)
	return lm.State, err
}

// CachedLayer is the state of the layer name when m has it whole.
func CachedLayer(m Machines, name string) (State, bool) {
	meta, ok := m.Layer(name)
	if !ok {
		return State{}, false
	}
	st, err := DecodeLayer(meta)
	return st, err == nil
}

// Run builds job on m: each step whose layer is cached is skipped, the others run in a VM
// started from the last layer (one VM for the rest of the build) and each is saved as a layer;
// then the finalize layer (the start command running, ready) is the template. A forced step
// rebuilds itself and every step after it.
func Run(ctx context.Context, m Machines, job Job) (res Result, err error) {
	b := &run{m: m, job: job, state: job.BaseState, from: job.Base}
	if b.job.Log == nil {
		b.job.Log = func(string, string, string) {}
	}
	defer func() {
		if b.vm != nil {
			_ = b.vm.Close()
		}
		for _, unlock := range b.unlocks {
			unlock()
		}
	}()
	key := job.BaseKey
	forced := job.Spec.Force
	for i, st := range job.Spec.Steps {
		n := fmt.Sprint(i + 1)
		key = LayerKey(key, st)
		forced = forced || st.Force
		name := LayerName(key)
		if !forced {
			if cached, ok := CachedLayer(m, name); ok {
				b.log(LevelInfo, n, "CACHED %s", describe(st))
				b.state, b.from = cached, name
				res.Cached++
				continue
			}
		}
		if !forced {
			// Another process may be building this very layer: wait for it, then take its.
			if hit, err := b.lockedHit(ctx, name); err != nil {
				return Result{}, &StepError{Step: n, Err: err}
			} else if hit {
				b.log(LevelInfo, n, "CACHED %s (built by another process)", describe(st))
				res.Cached++
				continue
			}
		}
		// Once a step runs, every step after it runs too: their layers were made on another
		// parent's state.
		forced = true
		t0 := time.Now()
		b.log(LevelInfo, n, "%s", describe(st))
		if err := b.ensureVM(ctx, n); err != nil {
			return Result{}, err
		}
		if err := b.step(ctx, n, st); err != nil {
			return Result{}, &StepError{Step: n, Err: err}
		}
		if _, err := b.save(ctx, n, name); err != nil {
			return Result{}, err
		}
		b.log(LevelInfo, n, "done in %s", time.Since(t0).Round(time.Millisecond))
		res.Built++
	}
	// Finalize: its key also covers the start and ready commands and the free disk asked for.
	fkey := finalKey(key, job.Spec.StartCmd, job.Spec.ReadyCmd)
	if job.MinFreeDiskMiB > 0 {
		fkey = freeKey(fkey, job.MinFreeDiskMiB)
	}
	fname := LayerName(fkey)
	if !forced {
		if cached, ok := CachedLayer(m, fname); ok {
			b.log(LevelInfo, "finalize", "CACHED finalize")
			res.Cached++
			return Result{Snapshot: fname, State: cached, Cached: res.Cached, Built: res.Built}, nil
		}
	}
	t0 := time.Now()
	if err := b.ensureVM(ctx, "finalize"); err != nil {
		return Result{}, err
	}
	if err := b.freeDisk(ctx); err != nil {
		return Result{}, &StepError{Step: "finalize", Err: err}
	}
	if err := b.finalize(ctx); err != nil {
		return Result{}, &StepError{Step: "finalize", Err: err}
	}
	saved, err := b.save(ctx, "finalize", fname)
	if err != nil {
		return Result{}, err
	}
	b.log(LevelInfo, "finalize", "template saved in %s", time.Since(t0).Round(time.Millisecond))
	res.Built++
	return Result{Snapshot: saved, State: b.state, Cached: res.Cached, Built: res.Built}, nil
}

// lockedHit takes layer name's cross-process lock (when m has one), keeping it until the build
// ends, and says whether the layer was made meanwhile (its state is then the build's).
func (b *run) lockedHit(ctx context.Context, name string) (bool, error) {
	l, ok := b.m.(Locker)
	if !ok {
		return false, nil
	}
	unlock, err := l.Lock(ctx, name)
	if err != nil {
		return false, err
	}
	b.unlocks = append(b.unlocks, unlock)
	cached, ok := CachedLayer(b.m, name)
	if !ok {
		return false, nil
	}
	b.state, b.from = cached, name
	return true, nil
}

// DiskGrower is a VM whose disk can grow while it runs.
type DiskGrower interface {
	// EnsureFree grows the VM's disk and its root file system, if need be, so that at least
	// mib MiB are free in it; it returns the free MiB before and after.
	EnsureFree(ctx context.Context, mib int) (before, after int, err error)
}

// freeDisk gives the template the free disk its build asked for (E2B's minFreeDiskMb), after
// the steps: the file system grows, never shrinks.
func (b *run) freeDisk(ctx context.Context) error {
	want := b.job.MinFreeDiskMiB
	if want <= 0 {
		return nil
	}
	g, ok := b.vm.(DiskGrower)
	if !ok {
		b.log(LevelWarn, "finalize", "minFreeDiskMb: these machines cannot grow a disk; the template keeps its own")
		return nil
	}
	before, after, err := g.EnsureFree(ctx, want)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		// E2B's growth is best effort too: an image without resize2fs keeps its disk.
		b.log(LevelWarn, "finalize", "minFreeDiskMb %d: the disk could not grow: %v", want, err)
		return nil
	}
	if after > before {
		b.log(LevelInfo, "finalize", "the disk grew for %d MiB free (it had %d MiB free, now %d MiB)", want, before, after)
	}
	return nil
}

func freeKey(key string, mib int) string {
	h := sha256.New()
	fmt.Fprintf(h, "free\x00%s\x00%d", key, mib)
	return hex.EncodeToString(h.Sum(nil))
}

func finalKey(key, start, ready string) string {
	h := sha256.New()
	fmt.Fprintf(h, "finalize\x00%s\x00%d:%s\x00%d:%s", key, len(start), start, len(ready), ready)
	return hex.EncodeToString(h.Sum(nil))
}

type run struct {
	m     Machines
	job   Job
	vm    VM
	state State
	from  string
	// unlocks release the layer locks the build holds (see lockedHit).
	unlocks []func()
}

func (b *run) log(level, step, format string, args ...any) {
	b.job.Log(level, step, fmt.Sprintf(format, args...))
}

func (b *run) ensureVM(ctx context.Context, step string) error {
	if b.vm != nil {
		return nil
	}
	t0 := time.Now()
	vm, err := b.m.Start(ctx, b.from, b.job.CPUs, b.job.MemoryMiB)
	if err != nil {
		return &StepError{Step: step, Err: fmt.Errorf("starting the build's VM: %w", err)}
	}
	b.vm = vm
	b.log(LevelDebug, step, "VM started from %s in %s", b.from, time.Since(t0).Round(time.Millisecond))
	return nil
}

// save keeps the VM's state as the layer name; the next VM of this build would start from it.
func (b *run) save(ctx context.Context, step, name string) (string, error) {
	meta, err := EncodeLayer(b.state)
	if err != nil {
		return "", err
	}
	saved, err := b.m.Save(ctx, b.vm, name, b.job.Team, meta)
	if err != nil {
		return "", &StepError{Step: step, Err: fmt.Errorf("saving the layer: %w", err)}
	}
	b.from = saved
	return saved, nil
}

// describe is a step as the log shows it.
func describe(st Step) string {
	args := strings.Join(st.Args, " ")
	if len(args) > 200 {
		args = args[:200] + "…"
	}
	return st.Type + " " + args
}

// tailLines keeps the last lines of a command's output for an error message, and sends every
// line to the log.
type logWriter struct {
	mu    sync.Mutex
	log   func(string)
	part  []byte
	tail  []string
	lines int
}

const (
	tailKeep    = 20
	maxLogLine  = 4096
	maxLogLines = 100_000 // past this, lines are counted, not logged
)

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.part = append(w.part, p...)
			if len(w.part) > maxLogLine {
				w.emit(w.part)
				w.part = w.part[:0]
			}
			break
		}
		w.part = append(w.part, p[:i]...)
		w.emit(w.part)
		w.part = w.part[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (w *logWriter) emit(line []byte) {
	s := strings.ToValidUTF8(strings.TrimRight(string(line), "\r"), "\uFFFD")
	if len(s) > maxLogLine {
		s = s[:maxLogLine]
	}
	w.lines++
	if w.lines <= maxLogLines {
		w.log(s)
	}
	w.tail = append(w.tail, s)
	if len(w.tail) > tailKeep {
		w.tail = w.tail[1:]
	}
}

func (w *logWriter) flush() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.part) > 0 {
		w.emit(w.part)
		w.part = w.part[:0]
	}
	return strings.Join(w.tail, "\n")
}

// sh runs script with bash (-c, args as $1…) in the build VM as user, in the build's
// environment and working directory, its output in the log; a non-zero exit is an error with
// the output's last lines.
func (b *run) sh(ctx context.Context, step, user, script string, stdin io.Reader, args ...string) error {
	out := &logWriter{log: func(s string) { b.job.Log(LevelInfo, step, s) }}
	spec := command.Spec{Cmd: "/bin/bash", Args: append([]string{"-c", script, "bash"}, args...),
		Env: b.state.Env, Cwd: b.state.Workdir, User: user}
	res, err := b.vm.Run(ctx, spec, stdin, out, out, nil)
	tail := out.flush()
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		if tail != "" {
			return fmt.Errorf("exited with code %d:\n%s", res.ExitCode, tail)
		}
		return fmt.Errorf("exited with code %d (%s)", res.ExitCode, res.Status)
	}
	return nil
}

// capture runs script as user and returns its standard output (bounded).
func (b *run) capture(ctx context.Context, user, script string, args ...string) (string, error) {
	var out, errb boundedBuffer
	spec := command.Spec{Cmd: "/bin/bash", Args: append([]string{"-c", script, "bash"}, args...),
		Env: b.state.Env, Cwd: b.state.Workdir, User: user}
	res, err := b.vm.Run(ctx, spec, nil, &out, &errb, nil)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("exited with code %d: %s", res.ExitCode, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// boundedBuffer keeps the first 1 MiB written to it.
type boundedBuffer struct{ bytes.Buffer }

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := 1<<20 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *run) step(ctx context.Context, n string, st Step) error {
	switch st.Type {
	case StepRun:
		user := b.state.User
		if len(st.Args) > 1 && st.Args[1] != "" {
			user = st.Args[1]
		}
		return b.sh(ctx, n, user, st.Args[0], nil)
	case StepEnv:
		env := maps.Clone(b.state.Env)
		if env == nil {
			env = map[string]string{}
		}
		for i := 0; i < len(st.Args); i += 2 {
			// Expanded in the guest as the current user, with the environment so far
			// ($PATH and $HOME are the guest's).
			v, err := b.capture(ctx, b.state.User, expandScript, guestQuote(st.Args[i+1]))
			if err != nil {
				return fmt.Errorf("expanding %s: %w", st.Args[i], err)
			}
			env[st.Args[i]] = v
			b.state.Env = env // later pairs see earlier ones, as in Docker
		}
		return nil
	case StepWorkdir:
		p := st.Args[0]
		if !path.IsAbs(p) {
			p = path.Join(b.state.Workdir, p)
		}
		p = path.Clean(p)
		if err := b.sh(ctx, n, "root", workdirScript, nil, p, b.state.User); err != nil {
			return err
		}
		b.state.Workdir = p
		return nil
	case StepUser:
		if err := b.sh(ctx, n, "root", userScript, nil, st.Args[0]); err != nil {
			return err
		}
		b.state.User = st.Args[0]
		return nil
	case StepCopy:
		return b.copyStep(ctx, n, st)
	}
	return fmt.Errorf("type %q: unknown", st.Type)
}

// expandScript prints $1 expanded as a double-quoted shell word: variables ($X, ${X},
// ${X:-d}) expand; guestQuote has escaped everything else that would (commands, quotes).
const expandScript = `eval "printf '%s' \"$1\""`

// guestQuote escapes s for expandScript: double quotes, backquotes, $( and lone backslashes
// stay literal; only variable references expand, and \$ and \\ are a literal $ and \ (an
// ENV value's escapes, as in Docker).
func guestQuote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (s[i+1] == '$' || s[i+1] == '\\'):
			b.WriteByte(c)
			b.WriteByte(s[i+1])
			i++
		case c == '\\' || c == '"' || c == '`':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '$' && (i+1 >= len(s) || s[i+1] == '(' || s[i+1] == '$' || s[i+1] == '\'' || s[i+1] == '"'):
			b.WriteString(`\$`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// workdirScript makes $1 and gives the directories it made to $2, as E2B's WORKDIR does.
const workdirScript = `set -e
d=$1 first=
p=$d
while [ ! -e "$p" ]; do first=$p; p=$(dirname "$p"); done
mkdir -p -- "$d"
if [ -n "$first" ]; then chown -R -- "$2:$(id -gn "$2")" "$first"; fi`

// userScript creates user $1 (with a home and bash, and sudo like the base image's user)
// unless it exists.
const userScript = `set -e
if ! id -u -- "$1" >/dev/null 2>&1; then
	useradd -m -s /bin/bash -- "$1"
	if getent group sudo >/dev/null; then usermod -aG sudo -- "$1"; fi
fi`

func (b *run) finalize(ctx context.Context) error {
	start, ready := b.job.Spec.StartCmd, b.job.Spec.ReadyCmd
	if start != "" && ready == "" {
		ready = DefaultReadyCmd
	}
	var pid string
	if start != "" {
		b.log(LevelInfo, "finalize", "starting: %s", start)
		out, err := b.capture(ctx, "root", startScript, b.state.User, start)
		if err != nil {
			return fmt.Errorf("starting the start command: %w", err)
		}
		pid = strings.TrimSpace(out)
	}
	if ready != "" {
		if err := b.waitReady(ctx, ready, pid); err != nil {
			return err
		}
	}
	// Sandboxes of the template run as the last user, in the last directory, with the env.
	user, wd := b.state.User, b.state.Workdir
	if err := b.vm.Init(ctx, envd.InitRequest{DefaultUser: &user, DefaultWorkdir: &wd, EnvVars: b.state.Env}); err != nil {
		return fmt.Errorf("setting the template's user and directory: %w", err)
	}
	if _, err := b.capture(ctx, "root", "sync"); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

// startScript starts $2 as user $1 in its own session, detached, its output in
// /var/log/cell-start.log, and prints its pid.
const startScript = `set -e
: > /var/log/cell-start.log
chown -- "$1" /var/log/cell-start.log
setsid runuser -u "$1" -- /bin/bash -l -c "$2" </dev/null >>/var/log/cell-start.log 2>&1 &
echo $!`

func (b *run) waitReady(ctx context.Context, ready, pid string) error {
	timeout := b.job.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	b.log(LevelInfo, "finalize", "waiting for: %s", ready)
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		if pid != "" {
			if _, err := b.capture(ctx, "root", `kill -0 "$1"`, pid); err != nil {
				log, _ := b.capture(ctx, "root", `tail -n 20 /var/log/cell-start.log`)
				return fmt.Errorf("the start command exited before it was ready:\n%s", strings.TrimSpace(log))
			}
		}
		actx, cancel := context.WithDeadline(ctx, deadline)
		var out boundedBuffer
		res, err := b.vm.Run(actx, command.Spec{Cmd: "/bin/bash", Args: []string{"-c", ready}, Env: b.state.Env,
			Cwd: b.state.Workdir, User: b.state.User}, nil, &out, &out, nil)
		cancel()
		if err == nil && res.ExitCode == 0 {
			b.log(LevelInfo, "finalize", "ready")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s", timeout, ready)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(readyInterval):
		}
	}
}

// ErrNoFiles is returned when a COPY step's upload is missing.
var ErrNoFiles = errors.New("the files of this step were not uploaded")

func (b *run) copyStep(ctx context.Context, n string, st Step) error {
	if b.job.Files == nil {
		return ErrNoFiles
	}
	rc, err := b.job.Files(st.FilesHash)
	if err != nil {
		return fmt.Errorf("files %s: %w", st.FilesHash, err)
	}
	defer func() { _ = rc.Close() }()
	src, dest := st.Args[0], st.Args[1]
	if !path.IsAbs(dest) && !strings.HasPrefix(dest, "~") {
		d := path.Join(b.state.Workdir, dest)
		if strings.HasSuffix(dest, "/") {
			d += "/"
		}
		dest = d
	}
	owner := b.state.User
	if len(st.Args) > 2 && st.Args[2] != "" {
		owner = st.Args[2]
	}
	mode := ""
	if len(st.Args) > 3 {
		mode = st.Args[3]
	}
	// E2B's SDKs gzip the tar unless told not to: tar is told which it got.
	br := bufio.NewReader(rc)
	gz := ""
	if head, _ := br.Peek(2); len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		gz = "-z"
	}
	return b.sh(ctx, n, "root", copyScript, br, src, dest, owner, mode, gz)
}

// copyScript unpacks the upload (a tar on stdin, gzipped when $5 is -z: its paths are relative
// to the client's context directory) and copies $1 (a path or a glob in that context) to $2
// with Docker's COPY rules: a directory's contents are merged into the destination, a file goes
// to the destination (into it when it ends with / or is a directory); what it copies is owned
// by $3 and, when $4 is set, has mode $4.
const copyScript = `set -e
t=$(mktemp -d)
trap 'rm -rf -- "$t" "$t.list"' EXIT
tar -x ${5:+"$5"} -f - -C "$t" --no-same-owner
src=$1 dest=$2 owner=$3 mode=$4
group=$(id -gn -- "$owner")
cd "$t"
shopt -s nullglob dotglob
matches=( $src )
if [ ${#matches[@]} -eq 0 ]; then echo "COPY: $src: no such file in the upload" >&2; exit 1; fi
# Directories COPY makes are the owner's too, as the files in them.
p=${dest%/}; first=
while [ -n "$p" ] && [ ! -e "$p" ]; do first=$p; p=$(dirname -- "$p"); done
if [ ${#matches[@]} -gt 1 ] || [[ "$dest" == */ ]]; then mkdir -p -- "$dest"; fi
for m in "${matches[@]}"; do
	if [ -d "$m" ] && [ ! -L "$m" ]; then
		mkdir -p -- "$dest"
		(cd "$m" && find . -mindepth 1 -printf '%P\0') > "$t.list"
		cp -a -- "$m/." "$dest/"
		while IFS= read -r -d '' f; do
			chown -h -- "$owner:$group" "$dest/$f"
			if [ -n "$mode" ] && [ ! -L "$dest/$f" ]; then chmod -- "$mode" "$dest/$f"; fi
		done < "$t.list"
		rm -f -- "$t.list"
	else
		target=$dest
		if [ -d "$dest" ]; then target=$dest/$(basename -- "$m"); fi
		mkdir -p -- "$(dirname -- "$target")"
		cp -a -- "$m" "$target"
		chown -h -- "$owner:$group" "$target"
		if [ -n "$mode" ] && [ ! -L "$target" ]; then chmod -- "$mode" "$target"; fi
	fi
done
if [ -n "$first" ] && [ -d "$first" ]; then
	d=${dest%/}
	[ -d "$d" ] || d=$(dirname -- "$d")
	while :; do chown -- "$owner:$group" "$d"; [ "$d" = "$first" ] || [ "$d" = / ] && break; d=$(dirname -- "$d"); done
fi`
