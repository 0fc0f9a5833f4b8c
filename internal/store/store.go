package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// Store is the database. Use Open; Close releases it.
type Store struct{ db *sql.DB }

const schema = `
CREATE TABLE IF NOT EXISTS teams (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
	id TEXT PRIMARY KEY,
	team_id TEXT NOT NULL REFERENCES teams(id),
	hash TEXT NOT NULL UNIQUE,
	mask TEXT NOT NULL,
	name TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS sandboxes (
	id TEXT PRIMARY KEY,
	team_id TEXT NOT NULL,
	template_id TEXT NOT NULL,
	state TEXT NOT NULL,
	metadata TEXT NOT NULL,
	env_vars TEXT NOT NULL,
	cpus INTEGER NOT NULL,
	memory_mib INTEGER NOT NULL,
	envd_token TEXT NOT NULL,
	allow_internet INTEGER NOT NULL,
	started_at INTEGER NOT NULL,
	end_at INTEGER NOT NULL,
	pid INTEGER NOT NULL DEFAULT 0,
	start_ticks INTEGER NOT NULL DEFAULT 0,
	seq INTEGER NOT NULL,
	reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sandboxes_team ON sandboxes(team_id, seq);
CREATE TABLE IF NOT EXISTS templates (
	id TEXT PRIMARY KEY,
	team_id TEXT NOT NULL,
	name TEXT NOT NULL,
	cpus INTEGER NOT NULL,
	memory_mib INTEGER NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	UNIQUE(team_id, name)
);
CREATE TABLE IF NOT EXISTS template_builds (
	id TEXT PRIMARY KEY,
	template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
	status TEXT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	reason_step TEXT NOT NULL DEFAULT '',
	snapshot TEXT NOT NULL DEFAULT '',
	cpus INTEGER NOT NULL,
	memory_mib INTEGER NOT NULL,
	created_at INTEGER NOT NULL,
	finished_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS template_builds_template ON template_builds(template_id, created_at);
CREATE TABLE IF NOT EXISTS template_tags (
	template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
	tag TEXT NOT NULL,
	build_id TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	PRIMARY KEY(template_id, tag)
);
`

// migrations add columns to databases made by earlier versions; "duplicate column" means done.
var migrations = []string{
	`ALTER TABLE sandboxes ADD COLUMN auto_pause INTEGER NOT NULL DEFAULT 0`,
	`ALTER TABLE sandboxes ADD COLUMN auto_pause_memory INTEGER NOT NULL DEFAULT 1`,
	`ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{}'`,
	`ALTER TABLE sandboxes ADD COLUMN traffic_token TEXT NOT NULL DEFAULT ''`,
	`ALTER TABLE sandboxes ADD COLUMN timeout_ms INTEGER NOT NULL DEFAULT 0`,
	`ALTER TABLE sandboxes ADD COLUMN disk_mib INTEGER NOT NULL DEFAULT 0`,
}

// Open opens (creating if needed) the database at path.
func Open(ctx context.Context, path string) (*Store, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)")
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises anyway and this avoids SQLITE_BUSY
	if _, err := db.ExecContext(ctx, schema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("creating the schema in %s: %w", path, err)
	}
	for _, m := range migrations {
		if _, err := db.ExecContext(ctx, m); err != nil && !strings.Contains(err.Error(), "duplicate column") {
			_ = db.Close()
			return nil, fmt.Errorf("migrating %s: %w", path, err)
		}
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Team is a tenant: sandboxes belong to one team, and a key sees only its team's.
type Team struct {
	ID, Name  string
	CreatedAt time.Time
}

// APIKey is a stored key; the key itself is never stored, only its hash.
type APIKey struct {
	ID, TeamID, Mask, Name string
	CreatedAt              time.Time
	Revoked                bool
}

// CreateTeam adds a team.
func (s *Store) CreateTeam(ctx context.Context, t Team) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO teams(id, name, created_at) VALUES(?,?,?)`, t.ID, t.Name, t.CreatedAt.UnixMilli())
	if err != nil {
		return fmt.Errorf("creating team %s: %w", t.ID, err)
	}
	return nil
}

// TeamByName finds a team by name.
func (s *Store) TeamByName(ctx context.Context, name string) (Team, error) {
	var t Team
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT id, name, created_at FROM teams WHERE name = ?`, name).Scan(&t.ID, &t.Name, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("team %q: %w", name, ErrNotFound)
	}
	t.CreatedAt = time.UnixMilli(at)
	return t, err
}

// CreateAPIKey stores a key's hash.
func (s *Store) CreateAPIKey(ctx context.Context, k APIKey, hash string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO api_keys(id, team_id, hash, mask, name, created_at) VALUES(?,?,?,?,?,?)`,
		k.ID, k.TeamID, hash, k.Mask, k.Name, k.CreatedAt.UnixMilli())
	if err != nil {
		return fmt.Errorf("storing API key: %w", err)
	}
	return nil
}

// KeyByHash finds a live key by its hash.
func (s *Store) KeyByHash(ctx context.Context, hash string) (APIKey, error) {
	var k APIKey
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT id, team_id, mask, name, created_at FROM api_keys WHERE hash = ? AND revoked_at IS NULL`, hash).
		Scan(&k.ID, &k.TeamID, &k.Mask, &k.Name, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	k.CreatedAt = time.UnixMilli(at)
	return k, err
}

// ListAPIKeys lists every key with its team.
func (s *Store) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, team_id, mask, name, created_at, revoked_at IS NOT NULL FROM api_keys ORDER BY created_at`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []APIKey
	for rows.Next() {
		var k APIKey
		var at int64
		if err := rows.Scan(&k.ID, &k.TeamID, &k.Mask, &k.Name, &at, &k.Revoked); err != nil {
			return nil, err
		}
		k.CreatedAt = time.UnixMilli(at)
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeAPIKey revokes a key by id (or by its mask).
func (s *Store) RevokeAPIKey(ctx context.Context, idOrMask string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR mask = ?) AND revoked_at IS NULL`,
		time.Now().UnixMilli(), idOrMask, idOrMask)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("API key %q: %w (or already revoked)", idOrMask, ErrNotFound)
	}
	return nil
}

// Sandbox states.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StatePaused   = "paused"
	StateKilled   = "killed"
	StateExpired  = "expired"
	StateLost     = "lost"
	StateFailed   = "failed"
)

// Live reports whether a state still holds resources.
func Live(state string) bool {
	return state == StateCreating || state == StateRunning || state == StatePaused
}

// Sandbox is a sandbox record.
type Sandbox struct {
	ID, TeamID, TemplateID, State string
	Metadata, EnvVars             map[string]string
	CPUs, MemoryMiB               int
	DiskMiB                       int // 0 in records older than the column
	EnvdToken                     string
	AllowInternet                 bool
	StartedAt, EndAt              time.Time
	PID                           int
	StartTicks                    uint64
	Seq                           int64
	Reason                        string // why it ended, for killed/expired/lost/failed
	// AutoPause pauses the sandbox at its timeout instead of killing it (with its RAM when
	// AutoPauseMemory).
	AutoPause, AutoPauseMemory bool
	// Network is the sandbox's egress policy and public-traffic setting (with AllowInternet).
	Network Network
	// TrafficToken is required on requests to its exposed ports unless public traffic is allowed.
	TrafficToken string
	// Timeout is the sandbox's own timeout: the one it was created or last set with. A resume
	// that names none lives this long (0 in records of earlier versions: the default).
	Timeout time.Duration
}

// Network is a sandbox's network configuration in E2B's terms.
type Network struct {
	AllowOut        []string `json:"allowOut,omitempty"`
	DenyOut         []string `json:"denyOut,omitempty"`
	PrivateTraffic  bool     `json:"privateTraffic,omitempty"` // allowPublicTraffic: false
	MaskRequestHost string   `json:"maskRequestHost,omitempty"`
}

// PutSandbox inserts or replaces a record.
func (s *Store) PutSandbox(ctx context.Context, sb Sandbox) error {
	md, err1 := json.Marshal(nonNil(sb.Metadata))
	env, err2 := json.Marshal(nonNil(sb.EnvVars))
	nw, err3 := json.Marshal(sb.Network)
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO sandboxes(id, team_id, template_id, state, metadata, env_vars, cpus,
		memory_mib, envd_token, allow_internet, started_at, end_at, pid, start_ticks, seq, reason, auto_pause, auto_pause_memory,
		network, traffic_token, timeout_ms, disk_mib)
		VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		sb.ID, sb.TeamID, sb.TemplateID, sb.State, string(md), string(env), sb.CPUs, sb.MemoryMiB, sb.EnvdToken,
		sb.AllowInternet, sb.StartedAt.UnixMilli(), sb.EndAt.UnixMilli(), sb.PID, int64(sb.StartTicks), sb.Seq, sb.Reason,
		sb.AutoPause, sb.AutoPauseMemory, string(nw), sb.TrafficToken, sb.Timeout.Milliseconds(), sb.DiskMiB)
	if err != nil {
		return fmt.Errorf("storing sandbox %s: %w", sb.ID, err)
	}
	return nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Sandboxes returns the records in the given states (all when none), oldest first.
func (s *Store) Sandboxes(ctx context.Context, states ...string) ([]Sandbox, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, team_id, template_id, state, metadata, env_vars, cpus, memory_mib, envd_token,
		allow_internet, started_at, end_at, pid, start_ticks, seq, reason, auto_pause, auto_pause_memory, network, traffic_token, timeout_ms, disk_mib FROM sandboxes ORDER BY seq`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	want := map[string]bool{}
	for _, st := range states {
		want[st] = true
	}
	var out []Sandbox
	for rows.Next() {
		var sb Sandbox
		var md, env, nw string
		var started, end, ticks, timeoutMs int64
		if err := rows.Scan(&sb.ID, &sb.TeamID, &sb.TemplateID, &sb.State, &md, &env, &sb.CPUs, &sb.MemoryMiB, &sb.EnvdToken,
			&sb.AllowInternet, &started, &end, &sb.PID, &ticks, &sb.Seq, &sb.Reason, &sb.AutoPause, &sb.AutoPauseMemory, &nw, &sb.TrafficToken, &timeoutMs, &sb.DiskMiB); err != nil {
			return nil, err
		}
		if len(want) > 0 && !want[sb.State] {
			continue
		}
		_ = json.Unmarshal([]byte(md), &sb.Metadata)
		_ = json.Unmarshal([]byte(env), &sb.EnvVars)
		_ = json.Unmarshal([]byte(nw), &sb.Network)
		sb.StartedAt, sb.EndAt, sb.StartTicks = time.UnixMilli(started), time.UnixMilli(end), uint64(ticks)
		sb.Timeout = time.Duration(timeoutMs) * time.Millisecond
		out = append(out, sb)
	}
	return out, rows.Err()
}

// NextSeq returns a number larger than every stored sandbox's seq.
func (s *Store) NextSeq(ctx context.Context) (int64, error) {
	var n sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(seq) FROM sandboxes`).Scan(&n); err != nil {
		return 0, err
	}
	return n.Int64 + 1, nil
}

// PruneEnded deletes records of sandboxes that ended before t.
func (s *Store) PruneEnded(ctx context.Context, t time.Time) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM sandboxes WHERE state IN (?,?,?,?) AND end_at < ?`,
		StateKilled, StateExpired, StateLost, StateFailed, t.UnixMilli())
	return err
}
