package cli

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/bench"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

type benchFlags struct {
	n       int
	json    bool
	accel   string
	memory  int
	restore bool
}

// name prefixes a measurement's name when sandboxes are restored from the template.
func (f *benchFlags) name(n string) string {
	if f.restore {
		return "restore_" + n
	}
	return n
}

func benchCmd(g *globals) *cobra.Command {
	f := &benchFlags{}
	cmd := &cobra.Command{Use: "bench", Short: "Measure Cell's speed (medians of repeated runs)"}
	cmd.PersistentFlags().IntVarP(&f.n, "n", "n", 10, "repetitions")
	cmd.PersistentFlags().BoolVar(&f.json, "json", false, "one JSON object per line")
	cmd.PersistentFlags().StringVar(&f.accel, "accel", "auto", "auto, kvm or tcg")
	cmd.PersistentFlags().IntVar(&f.memory, "memory", sandbox.DefaultMemoryMiB, "guest memory in MiB")
	cmd.PersistentFlags().BoolVar(&f.restore, "restore", false, "restore sandboxes from the base template's memory snapshot (built if missing) instead of booting them")
	cmd.AddCommand(
		&cobra.Command{Use: "boot", Short: "Cold boot: QEMU start to envd ready; QEMU's RSS and, under TCG, the blocks it translated", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchBoot(c.Context(), g, f, c.OutOrStdout()) }},
		&cobra.Command{Use: "density", Short: "Hold -n idle sandboxes at once: cell's and QEMU's memory per VM", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchDensity(c.Context(), g, f, c.OutOrStdout()) }},
		&cobra.Command{Use: "run", Short: "Boot, run `true`, tear down: `cell run -- true` without process start", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchRun(c.Context(), g, f, c.OutOrStdout()) }},
		&cobra.Command{Use: "compare", Short: "Side by side, interleaved: a sandbox restored from the template, a cold boot, and bwrap running python3 on the host (the floor)", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchCompare(c.Context(), g, f, c.OutOrStdout()) }},
	)
	cmd.AddCommand(managerBenchCmds(g, f)...)
	return cmd
}

// check checks the flags every benchmark takes.
func (f *benchFlags) check() error {
	if f.n < 1 {
		return fmt.Errorf("-n %d: must be at least 1", f.n)
	}
	return nil
}

func benchRuntime(ctx context.Context, g *globals, f *benchFlags) (*sandbox.Runtime, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	accel, err := vmm.ParseAccel(f.accel)
	if err != nil {
		return nil, err
	}
	rt, _, err := g.runtime(ctx, runtimeOpts{accel: accel, dieWithParent: true, attempts: 1})
	if err != nil || !f.restore {
		return rt, err
	}
	if f.memory != sandbox.DefaultMemoryMiB {
		return nil, fmt.Errorf("--memory %d: the template has %d MiB", f.memory, sandbox.DefaultMemoryMiB)
	}
	return rt, g.useTemplate(ctx, rt, "base")
}

// timedBoot boots one sandbox with the bench's memory size and says how long it took.
func timedBoot(ctx context.Context, rt *sandbox.Runtime, f *benchFlags) (*sandbox.Sandbox, time.Duration, error) {
	start := time.Now()
	sb, err := rt.Boot(ctx, sandbox.Options{MemoryMiB: f.memory})
	return sb, time.Since(start), err
}

func benchBoot(ctx context.Context, g *globals, f *benchFlags, out io.Writer) error {
	rt, err := benchRuntime(ctx, g, f)
	if err != nil {
		return err
	}
	var boots []time.Duration
	var rss, tbs []float64
	for i := 0; i < f.n; i++ {
		sb, took, err := timedBoot(ctx, rt, f)
		if err != nil {
			return err
		}
		boots = append(boots, took)
		rss = append(rss, bench.RSSMiB(sb.VM.PID))
		if rt.Accel == vmm.AccelTCG {
			// What TCG translated to get the guest ready (read after the timing).
			n, err := sb.VM.TranslationBlocks(ctx)
			if err != nil {
				_ = sb.Close()
				return err
			}
			tbs = append(tbs, float64(n))
		}
		if err := sb.Close(); err != nil {
			return err
		}
	}
	s := bench.Summarize(f.name("boot"), boots)
	s.Extra = map[string]float64{"qemu_rss_mib_median": bench.MedianFloat(rss), "memory_mib": float64(f.memory)}
	if len(tbs) > 0 {
		s.Extra["translation_blocks_median"] = bench.MedianFloat(tbs)
	}
	return bench.Print(out, f.json, s)
}

func benchRun(ctx context.Context, g *globals, f *benchFlags, out io.Writer) error {
	rt, err := benchRuntime(ctx, g, f)
	if err != nil {
		return err
	}
	var total, cmd []time.Duration
	for i := 0; i < f.n; i++ {
		start := time.Now()
		sb, err := rt.Boot(ctx, sandbox.Options{MemoryMiB: f.memory})
		if err != nil {
			return err
		}
		c0 := time.Now()
		res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "true"}, nil, io.Discard, io.Discard, nil)
		cmd = append(cmd, time.Since(c0))
		cerr := sb.Close()
		total = append(total, time.Since(start))
		if err != nil {
			return err
		}
		if cerr != nil {
			return cerr
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("true exited %d", res.ExitCode)
		}
	}
	return bench.Print(out, f.json, bench.Summarize(f.name("run"), total), bench.Summarize(f.name("run_command"), cmd))
}

// benchDensity boots f.n sandboxes, keeps them all running, and reports what each costs this
// process (Go heap and stacks, goroutines) and QEMU's resident memory.
func benchDensity(ctx context.Context, g *globals, f *benchFlags, out io.Writer) error {
	rt, err := benchRuntime(ctx, g, f)
	if err != nil {
		return err
	}
	goMem := func() float64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return float64(ms.HeapInuse+ms.StackInuse) / (1 << 20)
	}
	before, goroutines, avail := goMem(), runtime.NumGoroutine(), bench.MemAvailableMiB()
	var boxes []*sandbox.Sandbox
	defer func() {
		for _, sb := range boxes {
			_ = sb.Close()
		}
	}()
	var boots []time.Duration
	for i := 0; i < f.n; i++ {
		sb, took, err := timedBoot(ctx, rt, f)
		if err != nil {
			return err
		}
		boots = append(boots, took)
		boxes = append(boxes, sb)
	}
	time.Sleep(2 * time.Second) // let the guests settle
	after, goroutinesAfter := goMem(), runtime.NumGoroutine()
	var qemu, pss []float64
	total := 0.0
	for _, sb := range boxes {
		qemu = append(qemu, bench.RSSMiB(sb.VM.PID))
		p := bench.PSSMiB(sb.VM.PID)
		pss = append(pss, p)
		total += p
	}
	s := bench.Summarize(f.name("density_boot"), boots)
	s.Extra = map[string]float64{
		"vms":                    float64(f.n),
		"memory_mib":             float64(f.memory),
		"cell_go_mem_per_vm_mib": (after - before) / float64(f.n),
		"cell_goroutines_per_vm": float64(goroutinesAfter-goroutines) / float64(f.n),
		"qemu_rss_mib_median":    bench.MedianFloat(qemu),
		"qemu_pss_mib_median":    bench.MedianFloat(pss),
		"qemu_pss_mib_total":     total,
		"host_mem_used_mib":      avail - bench.MemAvailableMiB(),
	}
	return bench.Print(out, f.json, s)
}

// benchCompare measures, interleaved in one run so that the machine's load is the same for all:
// a sandbox restored from the template (to envd ready, identity given), the same followed by
// `python3 -c pass` in it, a cold boot, and `bwrap --ro-bind / / python3 -c pass` on the host
// (a process sandbox: the floor of what isolation can cost).
func benchCompare(ctx context.Context, g *globals, f *benchFlags, out io.Writer) error {
	bwrap, err := exec.LookPath("bwrap")
	if err != nil {
		return fmt.Errorf("bwrap (the host-process floor) is not installed: apt-get install bubblewrap")
	}
	f.restore = true
	rt, err := benchRuntime(ctx, g, f)
	if err != nil {
		return err
	}
	boot := func(cold bool, run bool) (time.Duration, error) {
		t0 := time.Now()
		sb, err := rt.Boot(ctx, sandbox.Options{Cold: cold})
		if err != nil {
			return 0, err
		}
		defer func() { _ = sb.Close() }()
		if run {
			res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "python3", Args: []string{"-c", "pass"}}, nil, io.Discard, io.Discard, nil)
			if err != nil {
				return 0, err
			}
			if res.ExitCode != 0 {
				return 0, fmt.Errorf("python3 -c pass exited %d in the sandbox", res.ExitCode)
			}
		}
		return time.Since(t0), nil
	}
	var restore, restorePy, cold, floor []time.Duration
	for i := 0; i < f.n; i++ {
		d, err := boot(false, false)
		if err != nil {
			return err
		}
		restore = append(restore, d)
		if d, err = boot(false, true); err != nil {
			return err
		}
		restorePy = append(restorePy, d)
		if d, err = boot(true, false); err != nil {
			return err
		}
		cold = append(cold, d)
		t0 := time.Now()
		if b, err := exec.CommandContext(ctx, bwrap, "--ro-bind", "/", "/", "python3", "-c", "pass").CombinedOutput(); err != nil {
			return fmt.Errorf("bwrap: %w: %s", err, b)
		}
		floor = append(floor, time.Since(t0))
	}
	r := bench.Summarize("compare_restore", restore)
	r.Extra = map[string]float64{
		"cold_over_restore":            float64(bench.Median(cold)) / float64(bench.Median(restore)),
		"restore_over_bwrap":           float64(bench.Median(restore)) / float64(bench.Median(floor)),
		"restore_python_over_bwrap":    float64(bench.Median(restorePy)) / float64(bench.Median(floor)),
		"restore_python_minus_restore": float64((bench.Median(restorePy) - bench.Median(restore)).Microseconds()) / 1000,
	}
	return bench.Print(out, f.json, r, bench.Summarize("compare_restore_python", restorePy),
		bench.Summarize("compare_cold", cold), bench.Summarize("compare_bwrap_python", floor))
}
