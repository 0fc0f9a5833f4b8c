package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
	pb "github.com/cellhq/cell/proto/process"
)

// Exit codes of `cell run` for failures of its own (as Docker does).
const (
	exitCellError   = 125
	exitCannotExec  = 126
	exitNotFound    = 127
	exitTimedOut    = 124
	exitInterrupted = 130
)

type runFlags struct {
	template   string
	memory     int
	cpus       int
	diskMiB    int
	timeout    time.Duration
	env        []string
	cwd        string
	user       string
	accel      string
	kernelArgs []string
	bootTO     time.Duration
	cold       bool
	tty        bool
	egress     egressFlags
	exempt     []string
	// Packages: the sandbox starts from a template with them (built once, cached).
	apt, pip, npm []string
}

func parseEnv(kvs []string) (map[string]string, error) {
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(k, "\x00") {
			return nil, fmt.Errorf("--env %q: want KEY=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}

func runCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Boot a fresh sandbox, run one command in it, and remove it",
		Long: "Boots a fresh microVM from the template, runs CMD in it as user `user` (unless --user),\n" +
			"streams its stdout and stderr, forwards stdin and exits with the command's exit code\n" +
			"(128+N when killed by signal N; 124 on --timeout; 125 when Cell itself failed; 127 when\n" +
			"CMD was not found).",
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			code, err := runOnce(c.Context(), g, f, args)
			if err != nil {
				fmt.Fprintln(c.ErrOrStderr(), "cell:", printable(err.Error()))
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.template, "template", "base", "template to start from")
	fl.IntVar(&f.memory, "memory", sandbox.DefaultMemoryMiB, "guest memory in MiB")
	fl.IntVar(&f.cpus, "cpus", sandbox.DefaultCPUs, "guest vCPUs")
	fl.IntVar(&f.diskMiB, "disk-size", 0, "the sandbox's disk in MiB, the most it can write (0: the template's, 2048 for base)")
	fl.DurationVar(&f.timeout, "timeout", 0, "kill the command after this long (0: no limit)")
	fl.StringArrayVar(&f.env, "env", nil, "environment variable KEY=VALUE (repeatable)")
	fl.StringVar(&f.cwd, "cwd", "", "working directory (default: the user's home)")
	fl.StringVar(&f.user, "user", sandbox.DefaultUser, "user to run as")
	fl.StringVar(&f.accel, "accel", "auto", "accelerator: auto, kvm or tcg")
	fl.StringArrayVar(&f.kernelArgs, "kernel-arg", nil, "extra guest kernel argument (debugging)")
	fl.BoolVar(&f.cold, "cold", false, "boot the sandbox instead of restoring the template's memory snapshot")
	fl.StringSliceVar(&f.apt, "apt", nil, "Debian packages the sandbox has (a template built once per set of packages, then cached)")
	fl.StringSliceVar(&f.pip, "pip", nil, "Python packages the sandbox has (as --apt)")
	fl.StringSliceVar(&f.npm, "npm", nil, "npm packages installed globally in the sandbox (as --apt)")
	fl.BoolVarP(&f.tty, "tty", "t", false, "run CMD in a pseudo-terminal (as docker run -t): its output is the terminal's, and a local terminal is put in raw mode")
	fl.DurationVar(&f.bootTO, "boot-timeout", 30*time.Second, "give up if the guest is not ready after this long")
	_ = fl.MarkHidden("kernel-arg")
	f.egress.register(cmd)
	registerExempt(cmd, &f.exempt)
	return cmd
}

func runOnce(ctx context.Context, g *globals, f *runFlags, args []string) (int, error) {
	accel, err := vmm.ParseAccel(f.accel)
	if err != nil {
		return exitCellError, err
	}
	env, err := parseEnv(f.env)
	if err != nil {
		return exitCellError, err
	}
	if f.timeout < 0 {
		return exitCellError, fmt.Errorf("--timeout %v: must not be negative", f.timeout)
	}
	rules, err := netstack.Compile(f.egress.policy())
	if err != nil {
		return exitCellError, err
	}
	exempt, err := parseExempt(f.exempt)
	if err != nil {
		return exitCellError, err
	}
	// Signals: the first SIGINT/SIGTERM goes to the command; a second one gives up.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	rt, _, err := g.runtime(ctx, runtimeOpts{accel: accel, dieWithParent: true, bootTimeout: f.bootTO, netExempt: exempt})
	if err != nil {
		return exitCellError, err
	}
	if len(f.apt)+len(f.pip)+len(f.npm) > 0 {
		if f.template != "base" {
			return exitCellError, fmt.Errorf("--apt, --pip and --npm build on the base template, not on --template %s", f.template)
		}
		t, err := g.packagesTemplate(ctx, rt, f)
		if err != nil {
			return exitCellError, err
		}
		f.template = t.Name
	} else if f.template != "base" {
		// A template `cell template build` made here: its build's snapshot, at its size.
		t, err := g.builtTemplate(ctx, rt, f.template)
		if err != nil {
			return exitCellError, err
		}
		f.template, f.memory, f.cpus = t.Name, t.MemoryMiB, t.CPUs
	} else if !f.cold && len(f.kernelArgs) == 0 && f.memory == sandbox.DefaultMemoryMiB && f.cpus == sandbox.DefaultCPUs {
		if err := g.useTemplate(ctx, rt, f.template); err != nil {
			fmt.Fprintln(os.Stderr, "cell: no template snapshot, booting cold:", printable(err.Error()))
		}
	}
	sb, err := rt.Boot(ctx, sandbox.Options{Template: f.template, MemoryMiB: f.memory, CPUs: f.cpus, DiskMiB: f.diskMiB, KernelArgs: f.kernelArgs, Cold: f.cold, Net: rules})
	if err != nil {
		return exitCellError, err
	}
	defer func() { _ = sb.Close() }()

	var pid atomic.Uint32
	stopSignals := make(chan struct{})
	defer close(stopSignals)
	go func() {
		forwarded := false
		for {
			select {
			case s := <-sigs:
				p := pid.Load()
				if forwarded || p == 0 {
					cancel(errors.New("interrupted"))
					return
				}
				forwarded = true
				sig := pb.Signal_SIGNAL_SIGINT
				switch s {
				case syscall.SIGTERM:
					sig = pb.Signal_SIGNAL_SIGTERM
				case syscall.SIGHUP:
					sig = pb.Signal_SIGNAL_SIGHUP
				}
				sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
				_ = sb.Signal(sctx, p, sig)
				scancel()
			case <-stopSignals:
				return
			}
		}
	}()

	runCtx := ctx
	if f.timeout > 0 {
		var c context.CancelFunc
		runCtx, c = context.WithTimeout(ctx, f.timeout)
		defer c()
	}
	var code int
	if f.tty {
		cfg := &pb.ProcessConfig{Cmd: args[0], Args: args[1:], Envs: env}
		if f.cwd != "" {
			cfg.Cwd = &f.cwd
		}
		err = interactive(runCtx, sb.Process, cfg, f.user, func(p uint32) { pid.Store(p) })
		var ee *ExitError
		if errors.As(err, &ee) {
			code, err = ee.Code, nil
		}
	} else {
		var res sandbox.Result
		res, err = sb.Run(runCtx, sandbox.RunSpec{Cmd: args[0], Args: args[1:], Env: env, Cwd: f.cwd, User: f.user},
			os.Stdin, os.Stdout, os.Stderr, func(p uint32) { pid.Store(p) })
		code = res.ExitCode
	}
	switch {
	case err == nil:
		return code, nil
	case f.timeout > 0 && errors.Is(runCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		return exitTimedOut, fmt.Errorf("command timed out after %v and was killed", f.timeout)
	case ctx.Err() != nil:
		return exitInterrupted, context.Cause(ctx)
	}
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		return exitNotFound, err
	case connect.CodeInvalidArgument:
		return exitCannotExec, err
	}
	return exitCellError, err
}
