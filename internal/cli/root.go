package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// ExitError carries a process exit code out of a command.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs the cell command line and returns the process exit code.
func Main(ctx context.Context, args []string) int { return execute(ctx, args, os.Stderr) }

// execute is Main with its messages (errors, warnings) written to stderr.
func execute(ctx context.Context, args []string, stderr io.Writer) int {
	g := &globals{}
	root := &cobra.Command{
		Use:           "cell",
		Short:         "Cell runs untrusted code in fast, isolated microVM sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.home, "home", defaultHome(), "data directory ($CELL_HOME)")
	root.PersistentFlags().StringVar(&g.envd, "envd", "", "envd binary to install in the guest image (default: next to cell)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "debug, info, warn or error")
	root.PersistentFlags().IntVar(&g.maxVMs, "max-vms", 64, "maximum VMs running at once")
	root.AddCommand(runCmd(g), imageCmd(g), doctorCmd(g), benchCmd(g), serveCmd(g), apikeyCmd(g), sandboxCmd(), templateCmd(g))
	top := &remote{}
	shell := shellCmd(top)
	top.flags(shell)
	root.AddCommand(shell)
	root.SetArgs(args)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	}
	// An error may carry what a sandbox chose (a file name, envd's message).
	fmt.Fprintln(stderr, "cell:", printable(err.Error()))
	return 1
}
