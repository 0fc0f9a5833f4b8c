package store

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestSandboxRecordsSurviveReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cell.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(time.Now().UnixMilli())
	recs := []Sandbox{
		{ID: "a1", TeamID: "t", TemplateID: "base", State: StateRunning, Metadata: map[string]string{"k": "v"},
			EnvVars: map[string]string{"E": "1"}, CPUs: 2, MemoryMiB: 512, DiskMiB: 3072, EnvdToken: "tok", AllowInternet: true,
			StartedAt: now, EndAt: now.Add(time.Minute), PID: 42, StartTicks: 1 << 40, Seq: 1, Timeout: 15 * time.Minute},
		{ID: "a2", TeamID: "t", TemplateID: "base", State: StateKilled, StartedAt: now, EndAt: now, Seq: 2, Reason: "killed by request"},
	}
	for _, r := range recs {
		if err := st.PutSandbox(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	live, err := st.Sandboxes(ctx, StateRunning, StateCreating)
	if err != nil || len(live) != 1 {
		t.Fatalf("live: %v %v", live, err)
	}
	if !reflect.DeepEqual(live[0], recs[0]) {
		t.Errorf("round trip:\n got %+v\nwant %+v", live[0], recs[0])
	}
	if n, err := st.NextSeq(ctx); err != nil || n != 3 {
		t.Errorf("next seq %d %v", n, err)
	}
	if err := st.PruneEnded(ctx, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	all, _ := st.Sandboxes(ctx)
	if len(all) != 1 || all[0].ID != "a1" {
		t.Errorf("after prune: %+v", all)
	}
}

func TestOpenMigratesAnOlderDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cell.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// Make it look like the first version: no auto-pause columns.
	for _, q := range []string{`ALTER TABLE sandboxes DROP COLUMN auto_pause`, `ALTER TABLE sandboxes DROP COLUMN auto_pause_memory`} {
		if _, err := st.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	_ = st.Close()
	st, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("reopening an older database: %v", err)
	}
	defer func() { _ = st.Close() }()
	rec := Sandbox{ID: "x", TeamID: "t", TemplateID: "base", State: StateRunning, AutoPause: true, AutoPauseMemory: true, Seq: 1}
	if err := st.PutSandbox(ctx, rec); err != nil {
		t.Fatal(err)
	}
	got, err := st.Sandboxes(ctx)
	if err != nil || len(got) != 1 || !got[0].AutoPause || !got[0].AutoPauseMemory {
		t.Fatalf("%+v %v", got, err)
	}
}
