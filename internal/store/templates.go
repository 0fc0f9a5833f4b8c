package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Build states, E2B's words.
const (
	BuildWaiting  = "waiting"
	BuildBuilding = "building"
	BuildReady    = "ready"
	BuildError    = "error"
)

// Template is a team's template: a name ([namespace/]alias) whose tags point at builds.
type Template struct {
	ID, TeamID, Name     string
	CPUs, MemoryMiB      int
	CreatedAt, UpdatedAt time.Time
}

// Build is one build of a template. Snapshot names the memory snapshot a ready build made.
type Build struct {
	ID, TemplateID, Status string
	Reason, ReasonStep     string
	Snapshot               string
	CPUs, MemoryMiB        int
	CreatedAt, FinishedAt  time.Time
}

// Tag points a template's tag at one of its builds.
type Tag struct {
	Tag, BuildID string
	CreatedAt    time.Time
}

// PutTemplate inserts t, or updates its size and time when it exists (by id).
func (s *Store) PutTemplate(ctx context.Context, t Template) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO templates(id, team_id, name, cpus, memory_mib, created_at, updated_at)
		VALUES(?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET cpus=excluded.cpus, memory_mib=excluded.memory_mib, updated_at=excluded.updated_at`,
		t.ID, t.TeamID, t.Name, t.CPUs, t.MemoryMiB, t.CreatedAt.UnixMilli(), t.UpdatedAt.UnixMilli())
	if err != nil {
		return fmt.Errorf("storing template %s: %w", t.ID, err)
	}
	return nil
}

const templateCols = `id, team_id, name, cpus, memory_mib, created_at, updated_at`

func scanTemplate(row interface{ Scan(...any) error }) (Template, error) {
	var t Template
	var c, u int64
	if err := row.Scan(&t.ID, &t.TeamID, &t.Name, &t.CPUs, &t.MemoryMiB, &c, &u); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Template{}, ErrNotFound
		}
		return Template{}, err
	}
	t.CreatedAt, t.UpdatedAt = time.UnixMilli(c), time.UnixMilli(u)
	return t, nil
}

// TemplateByID returns team's template id (ErrNotFound for another team's).
func (s *Store) TemplateByID(ctx context.Context, team, id string) (Template, error) {
	return scanTemplate(s.db.QueryRowContext(ctx, `SELECT `+templateCols+` FROM templates WHERE id=? AND team_id=?`, id, team))
}

// TemplateByName returns team's template named name (without its tag).
func (s *Store) TemplateByName(ctx context.Context, team, name string) (Template, error) {
	return scanTemplate(s.db.QueryRowContext(ctx, `SELECT `+templateCols+` FROM templates WHERE name=? AND team_id=?`, name, team))
}

// Templates returns team's templates, oldest first.
func (s *Store) Templates(ctx context.Context, team string) ([]Template, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+templateCols+` FROM templates WHERE team_id=? ORDER BY created_at, id`, team)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Template
	for rows.Next() {
		t, err := scanTemplate(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// DeleteTemplate removes template id with its builds and tags.
func (s *Store) DeleteTemplate(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM templates WHERE id=?`, id)
	return err
}

// PutBuild inserts or replaces a build.
func (s *Store) PutBuild(ctx context.Context, b Build) error {
	var fin int64
	if !b.FinishedAt.IsZero() {
		fin = b.FinishedAt.UnixMilli()
	}
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO template_builds(id, template_id, status, reason, reason_step, snapshot,
		cpus, memory_mib, created_at, finished_at) VALUES(?,?,?,?,?,?,?,?,?,?)`,
		b.ID, b.TemplateID, b.Status, b.Reason, b.ReasonStep, b.Snapshot, b.CPUs, b.MemoryMiB, b.CreatedAt.UnixMilli(), fin)
	if err != nil {
		return fmt.Errorf("storing build %s: %w", b.ID, err)
	}
	return nil
}

const buildCols = `id, template_id, status, reason, reason_step, snapshot, cpus, memory_mib, created_at, finished_at`

func scanBuild(row interface{ Scan(...any) error }) (Build, error) {
	var b Build
	var c, f int64
	if err := row.Scan(&b.ID, &b.TemplateID, &b.Status, &b.Reason, &b.ReasonStep, &b.Snapshot, &b.CPUs, &b.MemoryMiB, &c, &f); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Build{}, ErrNotFound
		}
		return Build{}, err
	}
	b.CreatedAt = time.UnixMilli(c)
	if f != 0 {
		b.FinishedAt = time.UnixMilli(f)
	}
	return b, nil
}

// BuildByID returns build id of template tid.
func (s *Store) BuildByID(ctx context.Context, tid, id string) (Build, error) {
	return scanBuild(s.db.QueryRowContext(ctx, `SELECT `+buildCols+` FROM template_builds WHERE id=? AND template_id=?`, id, tid))
}

// Builds returns template tid's builds (all templates' when tid is empty), oldest first.
func (s *Store) Builds(ctx context.Context, tid string) ([]Build, error) {
	q, args := `SELECT `+buildCols+` FROM template_builds ORDER BY created_at, id`, []any{}
	if tid != "" {
		q, args = `SELECT `+buildCols+` FROM template_builds WHERE template_id=? ORDER BY created_at, id`, []any{tid}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Build
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// SetTag points template tid's tag at build.
func (s *Store) SetTag(ctx context.Context, tid, tag, build string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO template_tags(template_id, tag, build_id, created_at) VALUES(?,?,?,?)`,
		tid, tag, build, at.UnixMilli())
	return err
}

// DeleteTag removes template tid's tag; ErrNotFound when it has none by that name.
func (s *Store) DeleteTag(ctx context.Context, tid, tag string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM template_tags WHERE template_id=? AND tag=?`, tid, tag)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// Tags returns template tid's tags by name.
func (s *Store) Tags(ctx context.Context, tid string) ([]Tag, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tag, build_id, created_at FROM template_tags WHERE template_id=? ORDER BY tag`, tid)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Tag
	for rows.Next() {
		var t Tag
		var c int64
		if err := rows.Scan(&t.Tag, &t.BuildID, &c); err != nil {
			return nil, err
		}
		t.CreatedAt = time.UnixMilli(c)
		out = append(out, t)
	}
	return out, rows.Err()
}

// TaggedSnapshots is the set of snapshots some tag's build made (every team's): the ones
// templates start sandboxes from.
func (s *Store) TaggedSnapshots(ctx context.Context) (map[string]bool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT b.snapshot FROM template_tags t JOIN template_builds b ON b.id = t.build_id WHERE b.snapshot != ''`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := map[string]bool{}
	for rows.Next() {
		var snap string
		if err := rows.Scan(&snap); err != nil {
			return nil, err
		}
		out[snap] = true
	}
	return out, rows.Err()
}
