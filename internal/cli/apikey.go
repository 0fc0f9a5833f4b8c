package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/auth"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/store"
)

func apikeyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "apikey", Short: "Create, list and revoke API keys"}
	var team, name string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an API key (printed once; only its hash is stored)",
		Args:  cobra.NoArgs,
		RunE: g.withStore(func(cmd *cobra.Command, _ []string, st *store.Store) error {
			key, _, err := auth.Keys{Store: st}.Create(cmd.Context(), team, name)
			if err != nil {
				return err
			}
			fmt.Println(key)
			return nil
		}),
	}
	create.Flags().StringVar(&team, "team", "default", "team the key belongs to (created if new)")
	create.Flags().StringVar(&name, "name", "", "a label for the key")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List API keys",
		Args:  cobra.NoArgs,
		RunE: g.withStore(func(cmd *cobra.Command, _ []string, st *store.Store) error {
			keys, err := st.ListAPIKeys(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKEY\tTEAM\tNAME\tCREATED\tREVOKED")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", k.ID, k.Mask, k.TeamID, k.Name, k.CreatedAt.Format("2006-01-02 15:04"), k.Revoked)
			}
			return tw.Flush()
		}),
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API key by its id",
		Args:  cobra.ExactArgs(1),
		RunE: g.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
			return st.RevokeAPIKey(cmd.Context(), args[0])
		}),
	}
	c.AddCommand(create, ls, revoke)
	return c
}

// withStore makes a command that works on the data directory's store.
func (g *globals) withStore(f func(cmd *cobra.Command, args []string, st *store.Store) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		st, err := g.openStore(cmd.Context())
		if err != nil {
			return err
		}
		defer func() { _ = st.Close() }()
		return f(cmd, args, st)
	}
}

func (g *globals) openStore(ctx context.Context) (*store.Store, error) {
	home, err := g.homeDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	return store.Open(ctx, datadir.Layout{Home: home}.DB())
}
