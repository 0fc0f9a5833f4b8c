package templates

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/pkg/e2bapi"
)

// lookup finds team's template by id or by name (a tag, if any, is returned apart).
func (s *Service) lookup(ctx context.Context, team, idOrName string) (store.Template, string, error) {
	return lookup(ctx, s.cfg.Store, team, idOrName)
}

func lookup(ctx context.Context, st Store, team, idOrName string) (store.Template, string, error) {
	if t, err := st.TemplateByID(ctx, team, idOrName); err == nil {
		return t, build.DefaultTag, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.Template{}, "", err
	}
	n, err := build.ParseName(idOrName)
	if err != nil {
		return store.Template{}, "", fmt.Errorf("%w: template %q", manager.ErrNotFound, idOrName)
	}
	t, err := st.TemplateByName(ctx, team, n.Base())
	if err != nil {
		return store.Template{}, "", notFound(err, "template %q", idOrName)
	}
	return t, n.Tag, nil
}

// Resolve finds the snapshot sandboxes of team's template idOrName ([namespace/]alias[:tag]
// or a template id) start from: the build its tag points at. ErrNotFound wraps every miss.
func (s *Service) Resolve(ctx context.Context, team, idOrName string) (snapshot, templateID string, err error) {
	return resolve(ctx, s.cfg.Store, team, idOrName)
}

// Resolve is Service.Resolve over st, for a process that runs no service (`cell run`).
func Resolve(ctx context.Context, st Store, team, idOrName string) (snapshot string, err error) {
	snapshot, _, err = resolve(ctx, st, team, idOrName)
	return snapshot, err
}

func resolve(ctx context.Context, st Store, team, idOrName string) (snapshot, templateID string, err error) {
	t, tag, err := lookup(ctx, st, team, idOrName)
	if err != nil {
		return "", "", err
	}
	b, err := tagged(ctx, st, t, tag)
	if err != nil {
		return "", "", err
	}
	return b.Snapshot, t.ID, nil
}

// tagged is the ready build tag points at.
func tagged(ctx context.Context, st Store, t store.Template, tag string) (store.Build, error) {
	tags, err := st.Tags(ctx, t.ID)
	if err != nil {
		return store.Build{}, err
	}
	for _, tg := range tags {
		if tg.Tag != tag {
			continue
		}
		b, err := st.BuildByID(ctx, t.ID, tg.BuildID)
		if err != nil {
			return store.Build{}, notFound(err, "template %s:%s: its build", t.Name, tag)
		}
		if b.Status != store.BuildReady || b.Snapshot == "" {
			return store.Build{}, fmt.Errorf("%w: template %s:%s is not built", manager.ErrNotFound, t.Name, tag)
		}
		return b, nil
	}
	return store.Build{}, fmt.Errorf("%w: template %s has no tag %q", manager.ErrNotFound, t.Name, tag)
}

// List is team's templates as GET /templates shows them.
func (s *Service) List(ctx context.Context, team string) ([]e2bapi.Template, error) {
	ts, err := s.cfg.Store.Templates(ctx, team)
	if err != nil {
		return nil, err
	}
	out := make([]e2bapi.Template, 0, len(ts))
	for _, t := range ts {
		v, err := s.view(ctx, t, false)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Get is team's template idOrName with its builds.
func (s *Service) Get(ctx context.Context, team, idOrName string) (e2bapi.Template, error) {
	t, _, err := s.lookup(ctx, team, idOrName)
	if err != nil {
		return e2bapi.Template{}, err
	}
	return s.view(ctx, t, true)
}

func (s *Service) view(ctx context.Context, t store.Template, withBuilds bool) (e2bapi.Template, error) {
	builds, err := s.cfg.Store.Builds(ctx, t.ID)
	if err != nil {
		return e2bapi.Template{}, err
	}
	v := e2bapi.Template{TemplateID: t.ID, CPUCount: t.CPUs, MemoryMB: t.MemoryMiB, Aliases: []string{t.Name}, Names: []string{t.Name},
		CreatedAt: t.CreatedAt.UTC(), UpdatedAt: t.UpdatedAt.UTC(), BuildCount: len(builds), EnvdVersion: "", BuildStatus: store.BuildWaiting}
	if len(builds) > 0 {
		last := builds[len(builds)-1]
		v.BuildID, v.BuildStatus = last.ID, last.Status
		if last.Snapshot != "" {
			v.DiskSizeMB = s.cfg.Snapshots.DiskMiB(last.Snapshot)
		}
	}
	if withBuilds {
		v.Builds = []e2bapi.TemplateBuild{}
		for _, b := range builds {
			tb := e2bapi.TemplateBuild{BuildID: b.ID, Status: b.Status, CreatedAt: b.CreatedAt.UTC(), UpdatedAt: b.CreatedAt.UTC(), CPUCount: b.CPUs, MemoryMB: b.MemoryMiB}
			if !b.FinishedAt.IsZero() {
				f := b.FinishedAt.UTC()
				tb.FinishedAt, tb.UpdatedAt = &f, f
			}
			v.Builds = append(v.Builds, tb)
		}
	}
	return v, nil
}

// Delete removes team's template and its builds and tags; ErrConflict while a sandbox
// (running or paused) was started from one of its builds. Its layers stay in the build cache.
func (s *Service) Delete(ctx context.Context, team, idOrName string) error {
	t, _, err := s.lookup(ctx, team, idOrName)
	if err != nil {
		return err
	}
	builds, err := s.cfg.Store.Builds(ctx, t.ID)
	if err != nil {
		return err
	}
	for _, b := range builds {
		if b.Status == store.BuildWaiting || b.Status == store.BuildBuilding {
			return fmt.Errorf("%w: template %s: build %s is under way", manager.ErrConflict, t.Name, b.ID)
		}
		if b.Snapshot == "" {
			continue
		}
		if users := s.cfg.Snapshots.InUse(b.Snapshot); len(users) > 0 {
			return fmt.Errorf("%w: template %s: used by %s", manager.ErrConflict, t.Name, strings.Join(users, ", "))
		}
	}
	return s.cfg.Store.DeleteTemplate(ctx, t.ID)
}

// Tags lists team's template's tags.
func (s *Service) Tags(ctx context.Context, team, idOrName string) ([]e2bapi.TemplateTag, error) {
	t, _, err := s.lookup(ctx, team, idOrName)
	if err != nil {
		return nil, err
	}
	tags, err := s.cfg.Store.Tags(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	out := make([]e2bapi.TemplateTag, 0, len(tags))
	for _, tg := range tags {
		out = append(out, e2bapi.TemplateTag{Tag: tg.Tag, BuildID: tg.BuildID, CreatedAt: tg.CreatedAt.UTC()})
	}
	return out, nil
}

// AssignTags points tags at the build target (name:tag) names.
func (s *Service) AssignTags(ctx context.Context, team, target string, tags []string) (buildID string, err error) {
	if len(tags) == 0 {
		return "", fmt.Errorf("%w: tags: give at least one", manager.ErrInvalid)
	}
	for _, tg := range tags {
		if err := build.ValidTag(tg); err != nil {
			return "", fmt.Errorf("%w: tags: %w", manager.ErrInvalid, err)
		}
	}
	t, tag, err := s.lookup(ctx, team, target)
	if err != nil {
		return "", err
	}
	b, err := tagged(ctx, s.cfg.Store, t, tag)
	if err != nil {
		return "", err
	}
	now := time.Now()
	for _, tg := range tags {
		if err := s.cfg.Store.SetTag(ctx, t.ID, strings.ToLower(tg), b.ID, now); err != nil {
			return "", err
		}
	}
	return b.ID, nil
}

// RemoveTags removes tags from team's template name.
func (s *Service) RemoveTags(ctx context.Context, team, name string, tags []string) error {
	if len(tags) == 0 {
		return fmt.Errorf("%w: tags: give at least one", manager.ErrInvalid)
	}
	t, _, err := s.lookup(ctx, team, name)
	if err != nil {
		return err
	}
	for _, tg := range tags {
		if err := s.cfg.Store.DeleteTag(ctx, t.ID, strings.ToLower(tg)); err != nil {
			return notFound(err, "template %s: tag %q", t.Name, tg)
		}
	}
	return nil
}
