package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/sandbox"
)

func templateCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "template", Short: "Build templates; list and remove template memory snapshots"}
	// Base templates live with the image cache, snapshots of sandboxes with the data.
	dirs := func() (homes []string, run, paused string, err error) {
		home, err := g.homeDir()
		if err != nil {
			return nil, "", "", err
		}
		run = os.Getenv("CELL_RUN_DIR")
		if run == "" {
			if run, err = sandbox.RunDir(home); err != nil {
				return nil, "", "", err
			}
		}
		homes = []string{home}
		if ih := imageHome(home); ih != home {
			homes = append(homes, ih)
		}
		return homes, run, datadir.Layout{Home: home}.Paused(), nil
	}
	lsRemote, rmRemote := &remote{}, &remote{}
	ls := &cobra.Command{
		Use: "ls", Short: "List template snapshots and the sandboxes that depend on each", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if remoteSet(cmd) {
				return listRemoteTemplates(cmd, lsRemote)
			}
			homes, run, paused, err := dirs()
			if err != nil {
				return err
			}
			var list []sandbox.TemplateInfo
			for _, h := range homes {
				l, err := sandbox.ListTemplates(h, run, paused)
				if err != nil {
					return err
				}
				list = append(list, l...)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TEMPLATE\tSNAPSHOT\tCREATED\tSIZE\tUSED BY")
			for _, t := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f MiB\t%d sandboxes\n", t.Name, filepath.Base(t.Dir),
					t.CreatedAt.Local().Format(time.DateTime), float64(t.Bytes)/(1<<20), len(t.Users))
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use: "rm TEMPLATE/SNAPSHOT…", Short: "Remove template snapshots no sandbox depends on (see ls)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if remoteSet(cmd) {
				cl, err := rmRemote.client()
				if err != nil {
					return err
				}
				for _, a := range args {
					if err := cl.DeleteTemplate(cmd.Context(), a); err != nil {
						return fmt.Errorf("%s: %w", printable(a), err)
					}
				}
				return nil
			}
			homes, run, paused, err := dirs()
			if err != nil {
				return err
			}
			// A running daemon may be starting a sandbox from the snapshot this moment: it
			// removes snapshots itself (DELETE /templates/{id}).
			home, err := g.homeDir()
			if err != nil {
				return err
			}
			lock, err := datadir.Acquire(home, "cell template rm")
			if err != nil {
				return fmt.Errorf("%w (while it runs, remove snapshots through it: DELETE /templates/{id})", err)
			}
			defer func() { _ = lock.Release() }()
			for _, a := range args {
				name, snap, ok := cutTemplate(a)
				if !ok {
					return fmt.Errorf("%q: want TEMPLATE/SNAPSHOT as `cell template ls` shows them", a)
				}
				err := fmt.Errorf("template %s: not found", a)
				for _, h := range homes {
					dir := filepath.Join(datadir.Layout{Home: h}.Template(name), snap)
					if _, serr := os.Stat(dir); serr == nil {
						err = sandbox.RemoveTemplate(dir, run, paused)
						break
					}
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	lsRemote.flags(ls)
	rmRemote.flags(rm)
	ls.Long = "Without --api: the template snapshots in the data directory (base, snapshots, build layers).\n" +
		"With --api (or $CELL_API_URL/$E2B_API_URL): the key's team's built templates on that cell serve."
	rm.Use = "rm TEMPLATE/SNAPSHOT… | --api URL NAME…"
	c.AddCommand(ls, rm, templateBuildCmd(g), templateTagCmd(g))
	return c
}

func cutTemplate(s string) (name, snap string, ok bool) {
	name, snap, ok = strings.Cut(s, "/")
	if !ok || ids.Validate("template", name) != nil || ids.Validate("snapshot", snap) != nil {
		return "", "", false
	}
	return name, snap, true
}

// listRemoteTemplates prints the key's team's built templates on a cell serve.
func listRemoteTemplates(cmd *cobra.Command, r *remote) error {
	cl, err := r.client()
	if err != nil {
		return err
	}
	list, err := cl.Templates(cmd.Context())
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME	TEMPLATE ID	LAST BUILD	BUILDS	CPUS	MEMORY	UPDATED")
	for _, t := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d MiB\t%s\n", printable(strings.Join(t.Names, ",")), printable(t.TemplateID), printable(t.BuildStatus),
			t.BuildCount, t.CPUCount, t.MemoryMB, t.UpdatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}
