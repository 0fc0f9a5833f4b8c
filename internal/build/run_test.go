package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cellhq/cell/pkg/envd"
	"github.com/cellhq/cell/pkg/envd/command"
)

// fakeMachines stands in for the VMs (the boundary these tests break): it records what ran and
// keeps layers in a map.
type fakeMachines struct {
	mu     sync.Mutex
	layers map[string][]byte
	starts []string
	ran    []string
	open   int
}

type fakeVM struct{ m *fakeMachines }

func (m *fakeMachines) Start(_ context.Context, from string, _, _ int) (VM, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.starts = append(m.starts, from)
	m.open++
	return fakeVM{m}, nil
}

func (m *fakeMachines) Save(_ context.Context, _ VM, name, _ string, meta []byte) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.layers[name]; ok {
		name += "-again"
	}
	m.layers[name] = meta
	return name, nil
}

func (m *fakeMachines) Layer(name string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.layers[name]
	return b, ok
}

func (v fakeVM) Run(_ context.Context, spec command.Spec, stdin io.Reader, stdout, _ io.Writer, _ func(uint32)) (command.Result, error) {
	script := spec.Args[1]
	v.m.mu.Lock()
	v.m.ran = append(v.m.ran, script)
	v.m.mu.Unlock()
	if stdin != nil {
		_, _ = io.Copy(io.Discard, stdin)
	}
	switch {
	case script == expandScript: // the guest's shell expanding a value
		_, _ = io.WriteString(stdout, os.Expand(strings.ReplaceAll(spec.Args[3], `\$`, "\x00"), func(k string) string {
			if v, ok := spec.Env[k]; ok {
				return v
			}
			return map[string]string{"HOME": "/home/user"}[k]
		}))
	case strings.Contains(script, "exit 3"):
		_, _ = io.WriteString(stdout, "boom\n")
		return command.Result{ExitCode: 3}, nil
	case script == startScript:
		_, _ = io.WriteString(stdout, "42\n")
	}
	return command.Result{}, nil
}

func (v fakeVM) Init(context.Context, envd.InitRequest) error { return nil }
func (v fakeVM) Close() error {
	v.m.mu.Lock()
	v.m.open--
	v.m.mu.Unlock()
	return nil
}

func job(steps ...Step) Job {
	return Job{Team: "t", Spec: Spec{Steps: steps}, Base: "base", BaseState: BaseState(), BaseKey: BaseKey("t", "/b", 2, 512), CPUs: 2, MemoryMiB: 512,
		Files: func(string) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("\x1f\x8bgz")), nil }}
}

func TestRunCachesLayers(t *testing.T) {
	m := &fakeMachines{layers: map[string][]byte{}}
	ctx := context.Background()
	steps := []Step{
		{Type: StepEnv, Args: []string{"A", "1", "P", "$HOME/bin:$A"}},
		{Type: StepWorkdir, Args: []string{"app"}},
		{Type: StepRun, Args: []string{"make"}},
		{Type: StepUser, Args: []string{"svc"}},
	}
	first, err := Run(ctx, m, job(steps...))
	if err != nil {
		t.Fatal(err)
	}
	if first.Built != 5 || first.Cached != 0 || len(m.starts) != 1 || m.starts[0] != "base" {
		t.Fatalf("first build: %+v, VMs started from %v", first, m.starts)
	}
	want := State{User: "svc", Workdir: "/home/user/app", Env: map[string]string{"A": "1", "P": "/home/user/bin:1"}}
	if first.State.User != want.User || first.State.Workdir != want.Workdir || first.State.Env["P"] != want.Env["P"] {
		t.Fatalf("state %+v, want %+v", first.State, want)
	}
	again, err := Run(ctx, m, job(steps...))
	if err != nil || again.Cached != 5 || again.Built != 0 || again.Snapshot != first.Snapshot || len(m.starts) != 1 {
		t.Fatalf("rebuild: %+v %v, VMs %v", again, err, m.starts)
	}
	// Changing step 3 rebuilds it and what follows, in a VM from step 2's layer, with step 2's state.
	changed := append([]Step(nil), steps...)
	changed[2] = Step{Type: StepRun, Args: []string{"make all"}}
	m.ran = nil
	res, err := Run(ctx, m, job(changed...))
	if err != nil || res.Cached != 2 || res.Built != 3 {
		t.Fatalf("changed: %+v %v", res, err)
	}
	if from := m.starts[len(m.starts)-1]; from != LayerName(LayerKey(LayerKey(job().BaseKey, steps[0]), steps[1])) {
		t.Fatalf("the VM started from %s, not step 2's layer", from)
	}
	if m.ran[0] != "make all" {
		t.Fatalf("ran %q first", m.ran[0])
	}
	// A forced step rebuilds itself and everything after, saved under new names.
	forced := append([]Step(nil), steps...)
	forced[1].Force = true
	res, err = Run(ctx, m, job(forced...))
	if err != nil || res.Cached != 1 || res.Built != 4 || res.Snapshot == first.Snapshot {
		t.Fatalf("forced: %+v %v", res, err)
	}
	if m.open != 0 {
		t.Fatalf("%d VMs left open", m.open)
	}
}

func TestRunFailsAtItsStep(t *testing.T) {
	m := &fakeMachines{layers: map[string][]byte{}}
	_, err := Run(context.Background(), m, job(Step{Type: StepRun, Args: []string{"true"}}, Step{Type: StepRun, Args: []string{"exit 3"}}))
	var se *StepError
	if !errors.As(err, &se) || se.Step != "2" || !strings.Contains(se.Error(), "exited with code 3") || !strings.Contains(se.Error(), "boom") {
		t.Fatalf("%v", err)
	}
	if len(m.layers) != 1 {
		t.Fatalf("%d layers saved, want step 1's only", len(m.layers))
	}
	if m.open != 0 {
		t.Fatalf("%d VMs left open", m.open)
	}
	// A start command without a ready command waits E2B's default.
	j := job()
	j.Spec.StartCmd = "serve"
	m.ran = nil
	if _, err := Run(context.Background(), m, j); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(m.ran, "\n"), DefaultReadyCmd) {
		t.Fatalf("ran %q, not the default ready command", m.ran)
	}
}

// lockingMachines is a Machines another process builds beside: while this one waits for a
// layer's lock, the other publishes that layer.
type lockingMachines struct {
	*fakeMachines
	locked []string
}

func (m *lockingMachines) Lock(_ context.Context, name string) (func(), error) {
	m.locked = append(m.locked, name)
	m.layers[name] = []byte(`{"state":{"user":"other","workdir":"/o"}}`)
	return func() {}, nil
}

func TestRunTakesALayerAnotherProcessBuilt(t *testing.T) {
	m := &lockingMachines{fakeMachines: &fakeMachines{layers: map[string][]byte{}}}
	res, err := Run(context.Background(), m, job(Step{Type: StepRun, Args: []string{"make"}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.locked) != 1 || res.Cached != 1 || slices.Contains(m.ran, "make") {
		t.Fatalf("locked %v, %+v, ran %v: the step was built again", m.locked, res, m.ran)
	}
	if res.State.User != "other" || res.Built != 1 {
		t.Fatalf("the finalize did not start from the other process's layer: %+v", res)
	}
}

// growingVM is a fakeVM whose disk grows: it records the free disk asked for.
type growingVM struct {
	fakeVM
	asked *[]int
}

func (v growingVM) EnsureFree(_ context.Context, mib int) (int, int, error) {
	*v.asked = append(*v.asked, mib)
	if mib == 9999 {
		return 100, 100, errors.New("no resize2fs")
	}
	return 100, mib, nil
}

type growingMachines struct {
	*fakeMachines
	asked []int
}

func (m *growingMachines) Start(ctx context.Context, from string, cpus, mem int) (VM, error) {
	vm, err := m.fakeMachines.Start(ctx, from, cpus, mem)
	if err != nil {
		return nil, err
	}
	return growingVM{vm.(fakeVM), &m.asked}, nil
}

// TestMinFreeDisk: the free disk asked for is given in finalize, after the steps; it is part of
// the finalize layer's key (the steps' layers stay shared), and machines that cannot grow a
// disk build the template as it is, with a warning.
func TestMinFreeDisk(t *testing.T) {
	m := &growingMachines{fakeMachines: &fakeMachines{layers: map[string][]byte{}}}
	ctx := context.Background()
	j := job(Step{Type: StepRun, Args: []string{"make"}})
	plain, err := Run(ctx, m, j)
	if err != nil || len(m.asked) != 0 {
		t.Fatalf("%v, asked %v", err, m.asked)
	}
	j.MinFreeDiskMiB = 3000
	var logs []string
	j.Log = func(_, _, msg string) { logs = append(logs, msg) }
	roomy, err := Run(ctx, m, j)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m.asked) != "[3000]" || roomy.Snapshot == plain.Snapshot || roomy.Cached != 1 || roomy.Built != 1 {
		t.Fatalf("asked %v; %+v vs %+v", m.asked, roomy, plain)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "the disk grew for 3000 MiB free") {
		t.Errorf("log:\n%s", strings.Join(logs, "\n"))
	}
	// The same again is all cached.
	again, err := Run(ctx, m, j)
	if err != nil || again.Snapshot != roomy.Snapshot || again.Built != 0 || len(m.asked) != 1 {
		t.Fatalf("%v %+v asked %v", err, again, m.asked)
	}
	// A disk that cannot grow (an image without resize2fs): best effort, a warning.
	logs = nil
	j.MinFreeDiskMiB = 9999
	if _, err := Run(ctx, m, j); err != nil || !strings.Contains(strings.Join(logs, "\n"), "could not grow: no resize2fs") {
		t.Fatalf("%v\n%s", err, strings.Join(logs, "\n"))
	}
	// Machines whose VMs cannot grow a disk: a warning, and the template.
	logs = nil
	j.MinFreeDiskMiB, j.Spec.Force = 4000, true
	if _, err := Run(ctx, m.fakeMachines, j); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "cannot grow a disk") {
		t.Errorf("log:\n%s", strings.Join(logs, "\n"))
	}
}
