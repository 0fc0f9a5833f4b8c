package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cellhq/cell/pkg/client"
	pb "github.com/cellhq/cell/proto/process"
	"github.com/cellhq/cell/proto/process/processconnect"
)

type remote struct{ url, key string }

func (r *remote) flags(c *cobra.Command) {
	url := os.Getenv("CELL_API_URL")
	if url == "" {
		url = os.Getenv("E2B_API_URL")
	}
	if url == "" {
		url = "http://127.0.0.1:3000"
	}
	c.PersistentFlags().StringVar(&r.url, "api", url, "cell serve address ($CELL_API_URL or $E2B_API_URL)")
	c.PersistentFlags().StringVar(&r.key, "api-key", os.Getenv("E2B_API_KEY"), "API key ($E2B_API_KEY)")
}

// run makes a command that needs a client of cell serve.
func (r *remote) run(f func(cmd *cobra.Command, args []string, cl *client.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := r.client()
		if err != nil {
			return err
		}
		return f(cmd, args, cl)
	}
}

func (r *remote) client() (*client.Client, error) {
	if r.key == "" {
		return nil, errors.New("an API key is required: --api-key or $E2B_API_KEY (cell apikey create)")
	}
	return client.New(r.url, r.key), nil
}

func sandboxCmd() *cobra.Command {
	r := &remote{}
	c := &cobra.Command{Use: "sandbox", Aliases: []string{"sb"}, Short: "Manage sandboxes on a cell serve"}
	r.flags(c)
	ls := &cobra.Command{
		Use: "ls", Short: "List sandboxes, running and paused", Args: cobra.NoArgs,
		RunE: r.run(func(cmd *cobra.Command, _ []string, cl *client.Client) error {
			list, err := cl.List(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTEMPLATE\tSTATE\tSTARTED\tENDS")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.SandboxID, s.TemplateID, s.State,
					s.StartedAt.Local().Format(time.TimeOnly), s.EndAt.Local().Format(time.TimeOnly))
			}
			return tw.Flush()
		}),
	}
	var template string
	var timeout time.Duration
	var meta []string
	var diskMiB int
	var egress egressFlags
	create := &cobra.Command{
		Use: "create", Short: "Create a sandbox and print its id", Args: cobra.NoArgs,
		RunE: r.run(func(cmd *cobra.Command, _ []string, cl *client.Client) error {
			md, err := parseEnv(meta)
			if err != nil {
				return err
			}
			o := client.CreateOptions{Template: template, Timeout: timeout, Metadata: md, DiskSizeMB: diskMiB}
			if egress.noInternet {
				off := false
				o.Internet = &off
			}
			if len(egress.allowOut) > 0 || len(egress.denyOut) > 0 {
				o.Network = &client.Network{AllowOut: egress.allowOut, DenyOut: egress.denyOut}
			}
			info, err := cl.Create(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Println(info.SandboxID)
			return nil
		}),
	}
	create.Flags().StringVar(&template, "template", "base", "template")
	create.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "time to live")
	create.Flags().StringArrayVar(&meta, "metadata", nil, "KEY=VALUE metadata (repeatable)")
	create.Flags().IntVar(&diskMiB, "disk-size", 0, "the sandbox's disk in MiB, the most it can write (0: the server's --disk-size)")
	egress.register(create)
	kill := &cobra.Command{
		Use: "kill ID…", Short: "Kill sandboxes", Args: cobra.MinimumNArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			var errs []error
			for _, id := range args {
				errs = append(errs, cl.Kill(cmd.Context(), id))
			}
			return errors.Join(errs...)
		}),
	}
	var user string
	var tty bool
	exec := &cobra.Command{
		Use: "exec ID -- CMD…", Short: "Run a command in a sandbox",
		Long: "Run a command in a sandbox. CMD… is joined with spaces into one command line for bash -l -c\n" +
			"(as ssh does: quote what the sandbox's shell must see as one word). Standard input is passed\n" +
			"on when it is not a terminal; the exit code is the command's. With -t the command runs in a\n" +
			"pseudo-terminal (as docker exec -t), for interactive programs.",
		Args: cobra.MinimumNArgs(2),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			sb, err := cl.Connect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if tty {
				cfg := &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", strings.Join(args[1:], " ")}}
				return interactive(cmd.Context(), sb.Process, cfg, user, nil)
			}
			var stdin io.Reader
			if !term.IsTerminal(int(os.Stdin.Fd())) {
				stdin = os.Stdin
			}
			res, err := sb.ExecInput(cmd.Context(), strings.Join(args[1:], " "), user, nil, stdin, os.Stdout, os.Stderr)
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return &ExitError{Code: res.ExitCode}
			}
			return nil
		}),
	}
	exec.Flags().StringVar(&user, "user", "", "user to run as (default: the sandbox's)")
	exec.Flags().BoolVarP(&tty, "tty", "t", false, "run the command in a pseudo-terminal")
	var allowUnsafeLinks bool
	cp := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories into or out of a sandbox (ID:PATH names a sandbox path)",
		Long: "Copy files or directories into or out of a sandbox, as docker cp does. One side is ID:PATH.\n" +
			"A directory is copied whole (files, directories, symbolic links, permission bits). A\n" +
			"destination that is an existing directory, or ends in /, receives the source under its own\n" +
			"name. \"-\" is standard input or output, for one file's bytes.\n" +
			"Out of a sandbox, modes lose the umask's bits, and a link that points outside what is copied\n" +
			"(an absolute target, or one climbing out with ..) is skipped with a warning unless\n" +
			"--allow-unsafe-links: a later copy, or a path you type, could write through it. A destination\n" +
			"that is a link to a directory is not copied into unless it ends in /; another link there is\n" +
			"replaced by the file or link copied, never written through.",
		Args: cobra.ExactArgs(2),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			return copyPaths(cmd.Context(), cl, args[0], args[1], newCopyOptions(user, allowUnsafeLinks), os.Stdin, os.Stdout, cmd.ErrOrStderr())
		}),
	}
	cp.Flags().StringVar(&user, "user", "", "user the sandbox side is read or written as (it owns what is copied in)")
	cp.Flags().BoolVar(&allowUnsafeLinks, "allow-unsafe-links", false, "out of a sandbox, also make the links that point outside the copy")
	var noMemory bool
	var resumeTimeout time.Duration // its own: flag defaults are set when a flag is declared
	pause := &cobra.Command{
		Use: "pause ID", Short: "Pause a sandbox: save it (RAM too, unless --no-memory) and stop its VM", Args: cobra.ExactArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			return cl.Pause(cmd.Context(), args[0], !noMemory)
		}),
	}
	pause.Flags().BoolVar(&noMemory, "no-memory", false, "keep only the file system (resume boots from it)")
	resume := &cobra.Command{
		Use: "resume ID", Short: "Resume a paused sandbox", Args: cobra.ExactArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			return cl.Resume(cmd.Context(), args[0], resumeTimeout)
		}),
	}
	resume.Flags().DurationVar(&resumeTimeout, "timeout", 0, "time to live from now (0: the sandbox's own timeout, the one it was created or last set with)")
	var internet string
	var setAllow, setDeny []string
	network := &cobra.Command{
		Use:   "network ID [--internet on|off] [--allow-out X]... [--deny-out CIDR]...",
		Short: "Change a sandbox's egress policy (new connections follow it at once)",
		Long: "Replaces the lists given (an empty --allow-out= or --deny-out= clears one) and switches\n" +
			"the internet on or off; what is not given stays as it is.",
		Args: cobra.ExactArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			var u client.NetworkUpdate
			switch internet {
			case "":
			case "on", "off":
				on := internet == "on"
				u.Internet = &on
			default:
				return fmt.Errorf("--internet %q: want on or off", internet)
			}
			if cmd.Flags().Changed("allow-out") {
				list := nonEmpty(setAllow)
				u.AllowOut = &list
			}
			if cmd.Flags().Changed("deny-out") {
				list := nonEmpty(setDeny)
				u.DenyOut = &list
			}
			if u.Internet == nil && u.AllowOut == nil && u.DenyOut == nil {
				return errors.New("nothing to change: give --internet, --allow-out or --deny-out")
			}
			return cl.UpdateNetwork(cmd.Context(), args[0], u)
		}),
	}
	network.Flags().StringVar(&internet, "internet", "", "on or off")
	network.Flags().StringArrayVar(&setAllow, "allow-out", nil, "CIDR, IP, domain or *.domain (repeatable; replaces the list)")
	network.Flags().StringArrayVar(&setDeny, "deny-out", nil, "CIDR or IP (repeatable; replaces the list)")
	var snapName string
	snapshot := &cobra.Command{
		Use: "snapshot ID [--name NAME]", Short: "Save a running sandbox (it keeps running) as a template; prints its id", Args: cobra.ExactArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			s, err := cl.Snapshot(cmd.Context(), args[0], snapName)
			if err != nil {
				return err
			}
			fmt.Println(s.SnapshotID)
			return nil
		}),
	}
	snapshot.Flags().StringVar(&snapName, "name", "", "a name for the snapshot")
	var forks int
	fork := &cobra.Command{
		Use: "fork ID [--count N]", Short: "Start N copies of a running sandbox; prints their ids", Args: cobra.ExactArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			res, err := cl.Fork(cmd.Context(), args[0], forks, timeout)
			if err != nil {
				return err
			}
			var errs []error
			for i, f := range res {
				switch {
				case f.Sandbox != nil:
					fmt.Println(f.Sandbox.SandboxID)
				case f.Error != nil:
					errs = append(errs, fmt.Errorf("fork %d: %s", i, f.Error.Message))
				}
			}
			return errors.Join(errs...)
		}),
	}
	fork.Flags().IntVar(&forks, "count", 1, "how many copies (1..100)")
	fork.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "time each copy lives")
	shell := shellCmd(r)
	c.AddCommand(ls, create, kill, exec, cp, shell, pause, resume, network, snapshot, fork)
	return c
}

// nonEmpty drops empty entries (an empty flag value clears a list).
func nonEmpty(in []string) []string {
	out := []string{}
	for _, s := range in {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func remotePath(s string) (id, path string, ok bool) {
	id, path, ok = strings.Cut(s, ":")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", "", false
	}
	return id, path, true
}

func shellCmd(r *remote) *cobra.Command {
	var user string
	c := &cobra.Command{
		Use: "shell ID", Short: "Open an interactive shell (PTY) in a sandbox", Args: cobra.ExactArgs(1),
		RunE: r.run(func(cmd *cobra.Command, args []string, cl *client.Client) error {
			sb, err := cl.Connect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return interactiveShell(cmd.Context(), sb, user)
		}),
	}
	c.Flags().StringVar(&user, "user", "", "user to log in as (default: the sandbox's)")
	return c
}

func interactiveShell(ctx context.Context, sb *client.Sandbox, user string) error {
	return interactive(ctx, sb.Process, &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-i", "-l"}}, user, nil)
}

// interactive runs cfg in a PTY sized like the local terminal, which is in raw mode while the
// process runs (when standard input is a terminal). It forwards input and window size changes,
// tells onStart (when not nil) the process's pid, and returns how the process ended: nil, or an
// *ExitError with its status.
func interactive(ctx context.Context, pc processconnect.ProcessClient, cfg *pb.ProcessConfig, user string, onStart func(uint32)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fd := int(os.Stdin.Fd())
	cols, rows := 80, 24
	if term.IsTerminal(fd) {
		if w, h, err := term.GetSize(fd); err == nil {
			cols, rows = w, h
		}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer func() { _ = term.Restore(fd, old) }()
	}
	if _, ok := cfg.Envs["TERM"]; !ok {
		termEnv := os.Getenv("TERM")
		if termEnv == "" {
			termEnv = "xterm-256color"
		}
		envs := map[string]string{"TERM": termEnv}
		for k, v := range cfg.Envs {
			envs[k] = v
		}
		cfg.Envs = envs
	}
	req := &pb.StartRequest{Process: cfg, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(cols), Rows: uint32(rows)}}}
	stream, err := pc.Start(ctx, client.AsUser(connect.NewRequest(req), user))
	if err != nil {
		return err
	}
	defer func() { _ = stream.Close() }()
	if !stream.Receive() {
		return stream.Err()
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	if onStart != nil {
		onStart(pid)
	}
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-winch:
				if w, h, err := term.GetSize(fd); err == nil {
					_, _ = pc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(w), Rows: uint32(h)}}}))
				}
			}
		}
	}()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := os.Stdin.Read(buf)
			if n > 0 {
				in := &pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: append([]byte(nil), buf[:n]...)}}}
				if _, err := pc.SendInput(ctx, connect.NewRequest(in)); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().GetEvent().(type) {
		case *pb.ProcessEvent_Data:
			_, _ = os.Stdout.Write(ev.Data.GetPty())
		case *pb.ProcessEvent_End:
			if code := int(ev.End.GetExitCode()); code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return errors.New("the process's stream ended before the process did")
}
