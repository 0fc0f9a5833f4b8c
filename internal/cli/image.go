package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
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
			g.pruneImages(c.Context(), os.Getenv("CELL_RUN_DIR"), os.Stderr)
			fmt.Fprintf(c.OutOrStdout(), "kernel: %s\ndisk:   %s\n", img.Kernel, img.Disk)
			return nil
		},
	}
	build.Flags().BoolVar(&force, "force", false, "rebuild even what is cached")
	cmd.AddCommand(build)
	return cmd
}
