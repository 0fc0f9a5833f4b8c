package cli

import (
	"context"
	"fmt"
	"io"
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
		&cobra.Command{Use: "boot", Short: "Cold boot: QEMU start to envd ready; QEMU's RSS", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchBoot(c.Context(), g, f, c.OutOrStdout()) }},
		&cobra.Command{Use: "density", Short: "Hold -n idle sandboxes at once: cell's and QEMU's memory per VM", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchDensity(c.Context(), g, f, c.OutOrStdout()) }},
		&cobra.Command{Use: "run", Short: "Boot, run `true`, tear down: `cell run -- true` without process start", Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return benchRun(c.Context(), g, f, c.OutOrStdout()) }},
	)
	cmd.AddCommand(managerBenchCmds(g, f)...)
	return cmd
}

func benchRuntime(ctx context.Context, g *globals, f *benchFlags) (*sandbox.Runtime, error) {
	if f.n < 1 {
		return nil, fmt.Errorf("-n %d: must be at least 1", f.n)
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
	var rss []float64
	for i := 0; i < f.n; i++ {
		sb, took, err := timedBoot(ctx, rt, f)
		if err != nil {
			return err
		}
		boots = append(boots, took)
		rss = append(rss, bench.RSSMiB(sb.VM.PID))
		if err := sb.Close(); err != nil {
			return err
		}
	}
	s := bench.Summarize(f.name("boot"), boots)
	s.Extra = map[string]float64{"qemu_rss_mib_median": bench.MedianFloat(rss), "memory_mib": float64(f.memory)}
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
