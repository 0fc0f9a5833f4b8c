package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/bench"
	"github.com/cellhq/cell/internal/daemon"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

// managerBenchCmds measure what `cell serve` does, through its sandbox manager (in process, with
// a throw-away store): create from the template, a pool hit, pause and resume, fork.
func managerBenchCmds(g *globals, f *benchFlags) []*cobra.Command {
	mk := func(use, short string, run func(context.Context, benchRig, *benchFlags, io.Writer) error) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs, RunE: func(c *cobra.Command, _ []string) error {
			rig, done, err := benchManager(c.Context(), g, f)
			if err != nil {
				return err
			}
			defer done()
			return run(c.Context(), rig, f, c.OutOrStdout())
		}}
	}
	return []*cobra.Command{
		mk("create", "Create from the base template (restore, with the init in the channel's handshake), as POST /sandboxes does", benchCreate),
		mk("first", "Create from the base template, then the E2B SDKs' first command in it (bash -l -c true): the round trip, and envd's own time for it (fork to reaping) in the guest", benchFirst),
		mk("pool", "Create served from a warm pool of 2", benchPool),
		mk("pause", "Pause with RAM (512 MiB written since the last restore, in a 1 GiB guest; then an idle template sandbox), then resume to envd ready once the paused VM is gone", benchPauseResume),
		mk("resume", "Same as pause: both are measured on each cycle", benchPauseResume),
		mk("fork", "Fork a running sandbox ×10", benchFork),
	}
}

// benchRig is what a manager benchmark drives: the manager, and settle, which waits until the
// VMs of paused sandboxes are gone (vmm.Host.Wait).
type benchRig struct {
	mgr    *manager.Manager
	settle func()
}

// benchManager is a daemon, started as `cell serve` starts one, over a temporary data directory
// (its store, run directory and paused sandboxes; no listener) that restores from the real base
// template (built if missing) and uses the real data directory's image cache and accelerator
// probe. Its VMs die with this process and are tried once (a retried boot would hide in the
// timings).
func benchManager(ctx context.Context, g *globals, f *benchFlags) (benchRig, func(), error) {
	if err := f.check(); err != nil {
		return benchRig{}, nil, err
	}
	accel, err := vmm.ParseAccel(f.accel)
	if err != nil {
		return benchRig{}, nil, err
	}
	if f.memory != sandbox.DefaultMemoryMiB {
		return benchRig{}, nil, fmt.Errorf("--memory %d: the template has %d MiB", f.memory, sandbox.DefaultMemoryMiB)
	}
	cfg, err := g.daemonConfig()
	if err != nil {
		return benchRig{}, nil, err
	}
	tmp, err := os.MkdirTemp("", "cell-bench-")
	if err != nil {
		return benchRig{}, nil, err
	}
	cfg.AccelCache = datadir.Layout{Home: cfg.Home}.Accel()
	cfg.Home, cfg.RunDir, cfg.Name = tmp, "", "cell bench"
	cfg.Accel, cfg.DiskMiB, cfg.RequireTemplate, cfg.Attached, cfg.BootAttempts = accel, sandbox.DefaultDiskMiB, true, true, 1
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		_ = os.RemoveAll(tmp)
		return benchRig{}, nil, err
	}
	return benchRig{mgr: d.Manager(), settle: d.Settle}, func() {
		if err := d.Shutdown(context.Background(), daemon.Kill); err != nil {
			cfg.Log.Warn("bench daemon shutdown", "err", err)
		}
		_ = os.RemoveAll(tmp)
	}, nil
}

const benchTeam = "bench"

func benchCreate(ctx context.Context, rig benchRig, f *benchFlags, out io.Writer) error {
	mgr := rig.mgr
	ds, err := timedCreates(ctx, mgr, f.n, func() error { return nil })
	if err != nil {
		return err
	}
	return bench.Print(out, f.json, bench.Summarize("create_from_template", ds))
}

// benchFirst measures what a user of the SDKs waits for first: a create, then a command, which in
// a fresh QEMU runs on a cold translation cache. It reports the command's time inside the guest
// (envd's, fork to reaping) beside its round trip, and a second command for comparison.
func benchFirst(ctx context.Context, rig benchRig, f *benchFlags, out io.Writer) error {
	mgr := rig.mgr
	var both, first, firstGuest, second, secondGuest []time.Duration
	for i := 0; i < f.n; i++ {
		t0 := time.Now()
		info, err := mgr.Create(ctx, manager.CreateRequest{Team: benchTeam, Secure: true, AllowInternet: true})
		if err != nil {
			return err
		}
		sb, err := mgr.Sandbox(benchTeam, info.ID)
		if err != nil {
			return err
		}
		run := func() (time.Duration, time.Duration, error) {
			t := time.Now()
			res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/bash", Args: []string{"-l", "-c", "true"}, User: sandbox.DefaultUser}, nil, io.Discard, io.Discard, nil)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("bash -l -c true exited %d", res.ExitCode)
			}
			return time.Since(t), res.Lifetime, err
		}
		rt1, g1, err := run()
		if err != nil {
			return err
		}
		both = append(both, time.Since(t0))
		rt2, g2, err := run()
		if err != nil {
			return err
		}
		_ = mgr.Kill(benchTeam, info.ID)
		first, firstGuest = append(first, rt1), append(firstGuest, g1)
		second, secondGuest = append(second, rt2), append(secondGuest, g2)
	}
	return bench.Print(out, f.json,
		bench.Summarize("create_then_first_command", both),
		bench.Summarize("first_command", first),
		bench.Summarize("first_command_in_guest", firstGuest),
		bench.Summarize("second_command", second),
		bench.Summarize("second_command_in_guest", secondGuest))
}

func benchPool(ctx context.Context, rig benchRig, f *benchFlags, out io.Writer) error {
	mgr := rig.mgr
	mgr.StartPool("base", 2)
	ds, err := timedCreates(ctx, mgr, f.n, func() error { return waitPool(ctx, mgr, 2) })
	if err != nil {
		return err
	}
	return bench.Print(out, f.json, bench.Summarize("pool_hit", ds))
}

// timedCreates times n creates (each killed after), calling before, untimed, ahead of each.
func timedCreates(ctx context.Context, mgr *manager.Manager, n int, before func() error) ([]time.Duration, error) {
	var ds []time.Duration
	for i := 0; i < n; i++ {
		if err := before(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		info, err := mgr.Create(ctx, manager.CreateRequest{Team: benchTeam, Secure: true, AllowInternet: true})
		if err != nil {
			return nil, err
		}
		ds = append(ds, time.Since(t0))
		_ = mgr.Kill(benchTeam, info.ID)
	}
	return ds, nil
}

func waitPool(ctx context.Context, mgr *manager.Manager, n int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for mgr.Pools()["base"].Ready < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("the pool did not fill: %+v", mgr.Pools())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// touch512 makes the guest hold 512 MiB of freshly written memory in a process that stays (the
// one a previous run started goes first).
const touch512 = `pkill -f ^python3.-c.#toucher; while pgrep -f ^python3.-c.#toucher >/dev/null; do sleep 0.05; done
rm -f /tmp/touched; (nohup python3 -c "#toucher
import time
b = bytearray(512 << 20)
for i in range(0, len(b), 4096): b[i] = 1
open('/tmp/touched', 'w').write('yes')
time.sleep(1e9)" >/dev/null 2>&1 &); while [ ! -e /tmp/touched ]; do sleep 0.1; done`

func benchPauseResume(ctx context.Context, rig benchRig, f *benchFlags, out io.Writer) error {
	mgr := rig.mgr
	info, err := mgr.Create(ctx, manager.CreateRequest{Team: benchTeam, Secure: true, AllowInternet: true, MemoryMiB: 1024, Timeout: time.Hour})
	if err != nil {
		return err
	}
	defer func() { _ = mgr.Kill(benchTeam, info.ID) }()
	// Each pause follows 512 MiB written since the last restore (the first restore is untimed:
	// the sandbox was booted, not restored).
	touch := func() error { return mgrExec(ctx, mgr, info.ID, touch512) }
	if _, _, err := pauseCycles(ctx, rig, info.ID, 1, touch); err != nil {
		return err
	}
	pauses, resumes, err := pauseCycles(ctx, rig, info.ID, f.n, touch)
	if err != nil {
		return err
	}
	// The common case too: a sandbox of the default size, restored from the template, idle.
	fresh, err := mgr.Create(ctx, manager.CreateRequest{Team: benchTeam, Secure: true, AllowInternet: true, Timeout: time.Hour})
	if err != nil {
		return err
	}
	defer func() { _ = mgr.Kill(benchTeam, fresh.ID) }()
	fp, fr, err := pauseCycles(ctx, rig, fresh.ID, f.n, func() error { return nil })
	if err != nil {
		return err
	}
	p := bench.Summarize("pause_512mib_written", pauses)
	p.Extra = map[string]float64{"seconds_per_gib_written": bench.Median(pauses).Seconds() * 2}
	return bench.Print(out, f.json, p, bench.Summarize("resume_envd_ready", resumes),
		bench.Summarize("pause_template_sandbox", fp), bench.Summarize("resume_template_sandbox", fr))
}

// pauseCycles pauses (with memory) and resumes sandbox id n times, timing each, and calls
// before, untimed, ahead of each pause.
func pauseCycles(ctx context.Context, rig benchRig, id string, n int, before func() error) (pauses, resumes []time.Duration, err error) {
	mgr := rig.mgr
	for i := 0; i < n; i++ {
		if err := before(); err != nil {
			return nil, nil, err
		}
		t0 := time.Now()
		if err := mgr.Pause(ctx, benchTeam, id, true); err != nil {
			return nil, nil, err
		}
		pauses = append(pauses, time.Since(t0))
		// A resume comes later than this in use: the paused VM's teardown (its QEMU's exit,
		// which goes on after the pause returns) is not the resume's to pay.
		rig.settle()
		t0 = time.Now()
		if _, _, err := mgr.Resume(ctx, benchTeam, id, time.Hour, true); err != nil {
			return nil, nil, err
		}
		resumes = append(resumes, time.Since(t0))
	}
	return pauses, resumes, nil
}

func benchFork(ctx context.Context, rig benchRig, f *benchFlags, out io.Writer) error {
	mgr := rig.mgr
	info, err := mgr.Create(ctx, manager.CreateRequest{Team: benchTeam, Secure: true, AllowInternet: true, Timeout: time.Hour})
	if err != nil {
		return err
	}
	defer func() { _ = mgr.Kill(benchTeam, info.ID) }()
	var ds []time.Duration
	for i := 0; i < f.n; i++ {
		t0 := time.Now()
		res, err := mgr.Fork(ctx, benchTeam, info.ID, 10, time.Hour)
		if err != nil {
			return err
		}
		ds = append(ds, time.Since(t0))
		for _, r := range res {
			if r.Err != nil {
				return r.Err
			}
			_ = mgr.Kill(benchTeam, r.Info.ID)
		}
	}
	return bench.Print(out, f.json, bench.Summarize("fork_x10", ds))
}

// mgrExec runs a shell command in a manager's sandbox and requires success.
func mgrExec(ctx context.Context, mgr *manager.Manager, id, cmd string) error {
	sb, err := mgr.Sandbox(benchTeam, id)
	if err != nil {
		return err
	}
	res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "/bin/bash", Args: []string{"-c", cmd}, User: "root"}, nil, io.Discard, io.Discard, nil)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("%q exited %d", cmd, res.ExitCode)
	}
	return nil
}
