package cli

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

func doctorCmd(g *globals) *cobra.Command {
	var accelFlag string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Report QEMU, the accelerator and why, the kernel and image in use, and the data directory",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			out := c.OutOrStdout()
			ok := true
			home, err := g.homeDir()
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "data directory: %s\n", home)
			if _, err := sandbox.FindTool("qemu-system-x86_64", "qemu-system-x86"); err != nil {
				// Cell builds its QEMU from this package's source and uses its firmware.
				ok = false
				fmt.Fprintf(out, "debian qemu:    MISSING: %v\n", err)
			}
			b, err := g.builder(false)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "envd:           %s\n", b.Envd)
			img, err := b.Lookup()
			if err != nil {
				ok = false
				fmt.Fprintf(out, "image:          NOT BUILT: %v\n", err)
			} else {
				v, _ := exec.Command(img.QEMU, "--version").Output()
				fmt.Fprintf(out, "qemu:           %s (%s)\n                %s\n", strings.SplitN(string(v), "\n", 2)[0], img.QEMU, img.QEMUInfo())
				fmt.Fprintf(out, "kernel:         %s\n                %s\n", img.Kernel, img.KernelInfo())
				fmt.Fprintf(out, "image:          base, %s\n", img.Disk)
			}
			rd, err := sandbox.RunDir(home)
			if err == nil {
				fmt.Fprintf(out, "run directory:  %s\n", rd)
			}
			if qemu := img.QEMU; qemu != "" && img.Kernel != "" {
				a, err := vmm.ParseAccel(accelFlag)
				if err != nil {
					return err
				}
				choice := vmm.ResolveAccel(c.Context(), a, qemu, img.Kernel, datadir.Layout{Home: home}.Accel())
				fmt.Fprintf(out, "accelerator:    %s (%s)\n", choice.Accel, choice.Reason)
			}
			if !ok {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&accelFlag, "accel", "auto", "auto, kvm or tcg")
	return cmd
}
