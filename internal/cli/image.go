package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/daemon"
	"github.com/cellhq/cell/internal/datadir"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build and inspect the guest image"}
	var force bool
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the guest kernel, root file system and base disk (cached by recipe hash)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			b, err := g.builder(true)
			if err != nil {
				return err
			}
			img, err := b.Ensure(c.Context(), force)
			if err != nil {
				return err
			}
			// A running daemon owns what is in use; removing earlier recipes' images waits for a
			// moment when none runs (its own start prunes them too).
			home, err := g.homeDir()
			if err != nil {
				return err
			}
			if lock, err := datadir.Acquire(home, "cell image build"); err != nil {
				fmt.Fprintf(os.Stderr, "cell: earlier recipes' images are kept: %v\n", err)
			} else {
				if cfg, err := g.daemonConfig(); err == nil {
					daemon.PruneImages(c.Context(), cfg, os.Stderr)
				}
				_ = lock.Release()
			}
			fmt.Fprintf(c.OutOrStdout(), "kernel: %s\ndisk:   %s\n", img.Kernel, img.Disk)
			return nil
		},
	}
	build.Flags().BoolVar(&force, "force", false, "rebuild even what is cached")
	cmd.AddCommand(build)
	return cmd
}
