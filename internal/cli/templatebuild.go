package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/daemon"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/templates"
	"github.com/cellhq/cell/pkg/client"
	"github.com/cellhq/cell/pkg/e2bapi"
)

// LocalTeam owns the templates `cell template build` makes in process (no cell serve): `cell
// run --template` finds them there.
const LocalTeam = "local"

// templateBuilder is where a build runs: a cell serve (for its key's team) or this process
// (an in-process daemon over the data directory, for LocalTeam).
type templateBuilder interface {
	create(ctx context.Context, name string, tags []string) (tid, bid string, err error)
	// upload sends a COPY step's files unless the builder has them (present).
	upload(ctx context.Context, tid, hash string, open func() (io.ReadCloser, int64, error)) (present bool, err error)
	start(ctx context.Context, tid, bid string, spec build.Spec) error
	wait(ctx context.Context, tid, bid string, onLog func(e2bapi.BuildLogEntry)) error
}

type remoteBuilder struct{ c *client.Client }

func (b remoteBuilder) create(ctx context.Context, name string, tags []string) (string, string, error) {
	t, err := b.c.CreateTemplate(ctx, name, client.TemplateOptions{Tags: tags})
	return t.TemplateID, t.BuildID, err
}

func (b remoteBuilder) upload(ctx context.Context, tid, hash string, open func() (io.ReadCloser, int64, error)) (bool, error) {
	return b.c.UploadFiles(ctx, tid, hash, open)
}

func (b remoteBuilder) start(ctx context.Context, tid, bid string, spec build.Spec) error {
	return b.c.StartBuild(ctx, tid, bid, toWire(spec))
}

func (b remoteBuilder) wait(ctx context.Context, tid, bid string, onLog func(e2bapi.BuildLogEntry)) error {
	return b.c.WaitBuild(ctx, tid, bid, onLog)
}

func toWire(spec build.Spec) client.BuildSpec {
	w := client.BuildSpec{FromImage: spec.FromImage, FromTemplate: spec.FromTemplate, Force: spec.Force, StartCmd: spec.StartCmd,
		ReadyCmd: spec.ReadyCmd, Steps: []client.BuildStep{}}
	for _, st := range spec.Steps {
		w.Steps = append(w.Steps, client.BuildStep{Type: st.Type, Args: st.Args, FilesHash: st.FilesHash, Force: st.Force})
	}
	return w
}

type localBuilder struct{ s *templates.Service }

func (b localBuilder) create(ctx context.Context, name string, tags []string) (string, string, error) {
	c, err := b.s.Create(ctx, templates.CreateRequest{Team: LocalTeam, Name: name, Tags: tags})
	return c.TemplateID, c.BuildID, err
}

func (b localBuilder) upload(ctx context.Context, tid, hash string, open func() (io.ReadCloser, int64, error)) (bool, error) {
	present, _, err := b.s.Files(ctx, LocalTeam, tid, hash, "")
	if err != nil || present {
		return present, err
	}
	r, size, err := open()
	if err != nil {
		return false, err
	}
	defer func() { _ = r.Close() }()
	return false, b.s.PutFiles(ctx, LocalTeam, hash, r, size)
}

func (b localBuilder) start(ctx context.Context, tid, bid string, spec build.Spec) error {
	return b.s.Start(ctx, LocalTeam, tid, bid, spec)
}

func (b localBuilder) wait(ctx context.Context, tid, bid string, onLog func(e2bapi.BuildLogEntry)) error {
	return client.FollowBuild(ctx, func(ctx context.Context, offset int) (e2bapi.BuildStatus, error) {
		return b.s.Status(ctx, LocalTeam, tid, bid, offset)
	}, onLog)
}

type buildFlags struct {
	file      string
	name      string
	tags      []string
	noCache   bool
	buildArgs []string
	exempt    []string
	mirrors   []string
}

func templateBuildCmd(g *globals) *cobra.Command {
	r := &remote{}
	f := &buildFlags{}
	c := &cobra.Command{
		Use:   "build [-f Dockerfile] [--name NAME[:TAG]] [--no-cache] [CONTEXT]",
		Short: "Build a template from a Dockerfile (E2B's subset) with a layer cache",
		Long: "Builds a template from the Dockerfile in CONTEXT (default .): FROM, RUN, COPY/ADD of local files,\n" +
			"ENV, ARG, WORKDIR, USER, and CMD/ENTRYPOINT as the command running in every sandbox of the\n" +
			"template. Each step is a cached layer: an unchanged step is CACHED. With --api (or\n" +
			"$CELL_API_URL/$E2B_API_URL) it builds on that cell serve for the key's team; otherwise in this\n" +
			"process, into the data directory, for `cell run --template` (no cell serve may hold it then).",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			return runTemplateBuild(cmd.Context(), g, r, remoteSet(cmd), f, dir)
		},
	}
	r.flags(c)
	c.Flags().StringVarP(&f.file, "file", "f", "", "the Dockerfile (default CONTEXT/Dockerfile)")
	c.Flags().StringVarP(&f.name, "name", "t", "", "the template's name, [namespace/]alias[:tag] (default: the context directory's name)")
	c.Flags().StringArrayVar(&f.tags, "tag", nil, "another tag for the build (repeatable)")
	c.Flags().BoolVar(&f.noCache, "no-cache", false, "build every step, cached or not")
	c.Flags().StringArrayVar(&f.buildArgs, "build-arg", nil, "KEY=VALUE for an ARG (repeatable)")
	c.Flags().StringArrayVar(&f.mirrors, "registry-mirror", nil, "without a cell serve: pull a registry's images from a mirror, e.g. docker.io=http://127.0.0.1:5000 (repeatable)")
	registerExempt(c, &f.exempt)
	return c
}

func runTemplateBuild(ctx context.Context, g *globals, r *remote, remoteSet bool, f *buildFlags, dir string) error {
	file := f.file
	if file == "" {
		file = filepath.Join(dir, "Dockerfile")
	}
	src, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	args := map[string]string{}
	for _, a := range f.buildArgs {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			v, ok = os.LookupEnv(k) // Docker's --build-arg NAME takes NAME's value from here
			if !ok {
				continue
			}
		}
		args[k] = v
	}
	df, err := build.ParseDockerfile(src, args)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	for _, w := range df.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s: %s\n", file, printable(w))
	}
	if err := df.HashCopies(ctx, dir); err != nil {
		return err
	}
	name := f.name
	if name == "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return err
		}
		name = strings.ToLower(filepath.Base(abs))
	}
	spec := df.Spec
	spec.Force = f.noCache

	var b templateBuilder
	if remoteSet {
		cl, err := r.client()
		if err != nil {
			return err
		}
		b = remoteBuilder{cl}
	} else {
		exempt, err := parseExempt(f.exempt)
		if err != nil {
			return err
		}
		d, err := g.localDaemon(ctx, "cell template build", exempt, f.mirrors)
		if err != nil {
			return err
		}
		defer func() { _ = d.Shutdown(context.Background(), daemon.Kill) }()
		b = localBuilder{d.Templates()}
	}
	t0 := time.Now()
	tid, bid, err := b.create(ctx, name, f.tags)
	if err != nil {
		return err
	}
	for _, cp := range df.Copies {
		st := spec.Steps[cp.Step]
		present, err := b.upload(ctx, tid, st.FilesHash, func() (io.ReadCloser, int64, error) { return packToTemp(ctx, dir, cp.Src, cp.Dest, st.FilesHash) })
		if err != nil {
			return fmt.Errorf("%s:%d: COPY %s: %w", file, cp.Line, printable(cp.Src), err)
		}
		if !present {
			fmt.Fprintf(os.Stderr, "uploaded %s\n", printable(cp.Src))
		}
	}
	if err := b.start(ctx, tid, bid, spec); err != nil {
		return err
	}
	err = b.wait(ctx, tid, bid, func(e e2bapi.BuildLogEntry) {
		prefix := "#" + e.Step
		if e.Step == "" {
			prefix = "#"
		}
		fmt.Fprintf(os.Stderr, "%-9s %s\n", prefix, printable(e.Message))
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "built %s in %s\n", printable(name), time.Since(t0).Round(time.Millisecond))
	fmt.Println(tid)
	return nil
}

// packToTemp packs a COPY step's files into a temporary file (removed when closed) and checks
// that they are still those hashed.
func packToTemp(ctx context.Context, dir, src, dest, hash string) (io.ReadCloser, int64, error) {
	tmp, err := os.CreateTemp("", "cell-copy-*.tar.gz")
	if err != nil {
		return nil, 0, err
	}
	_ = os.Remove(tmp.Name()) // the open file is all that is needed
	got, err := build.PackCopy(ctx, dir, src, dest, tmp)
	if err == nil && got != hash {
		err = fmt.Errorf("%s changed during the build", src)
	}
	var size int64
	if err == nil {
		size, err = tmp.Seek(0, io.SeekCurrent)
	}
	if err == nil {
		_, err = tmp.Seek(0, io.SeekStart)
	}
	if err != nil {
		_ = tmp.Close()
		return nil, 0, err
	}
	return tmp, size, nil
}

// localDaemon starts a daemon over the data directory in this process, for template commands
// with no cell serve (which would hold the directory: then the error says to use --api).
func (g *globals) localDaemon(ctx context.Context, name string, exempt []netip.Prefix, mirrors []string) (*daemon.Daemon, error) {
	cfg, err := g.daemonConfig()
	if err != nil {
		return nil, err
	}
	cfg.Name, cfg.Attached, cfg.DiskMiB, cfg.NetExempt, cfg.RegistryMirrors = name, true, sandbox.DefaultDiskMiB, exempt, mirrors
	d, err := daemon.Start(ctx, cfg)
	if errors.Is(err, datadir.ErrInUse) {
		return nil, fmt.Errorf("%w: use it with --api (or $CELL_API_URL)", err)
	}
	return d, err
}

// remoteSet says whether the command was pointed at a cell serve.
func remoteSet(cmd *cobra.Command) bool {
	return cmd.Flags().Changed("api") || os.Getenv("CELL_API_URL") != "" || os.Getenv("E2B_API_URL") != ""
}

// templateTagCmd points tags at a build, on a cell serve or here.
func templateTagCmd(g *globals) *cobra.Command {
	r := &remote{}
	c := &cobra.Command{
		Use: "tag NAME[:TAG] NEWTAG…", Short: "Point tags at the build NAME[:TAG] names (the default tag when none)", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if remoteSet(cmd) {
				cl, err := r.client()
				if err != nil {
					return err
				}
				return cl.TagTemplate(ctx, args[0], args[1:])
			}
			d, err := g.localDaemon(ctx, "cell template tag", nil, nil)
			if err != nil {
				return err
			}
			defer func() { _ = d.Shutdown(context.Background(), daemon.Kill) }()
			_, err = d.Templates().AssignTags(ctx, LocalTeam, args[0], args[1:])
			return err
		},
	}
	r.flags(c)
	return c
}
