package auth

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/cellhq/cell/internal/store"
)

func TestKeysCreateResolveRevoke(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "cell.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	k := Keys{Store: st}
	a1, rec, err := k.Create(ctx, "alpha", "one")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^e2b_[0-9a-f]{40}$`).MatchString(a1) {
		t.Fatalf("key form %q", a1)
	}
	a2, _, _ := k.Create(ctx, "alpha", "two")
	b1, _, _ := k.Create(ctx, "beta", "")
	ta1, err1 := k.Team(ctx, a1)
	ta2, err2 := k.Team(ctx, a2)
	tb1, err3 := k.Team(ctx, b1)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if ta1 != ta2 || ta1 == tb1 {
		t.Fatalf("teams: %s %s %s", ta1, ta2, tb1)
	}
	keys, err := st.ListAPIKeys(ctx)
	if err != nil || len(keys) != 3 {
		t.Fatalf("list: %v %v", keys, err)
	}
	for _, s := range keys {
		if s.Mask == a1 || len(s.Mask) > 20 {
			t.Errorf("a stored mask reveals the key: %q", s.Mask)
		}
	}
	if err := st.RevokeAPIKey(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Team(ctx, a1); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("revoked key: %v", err)
	}
	if err := st.RevokeAPIKey(ctx, rec.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoking twice: %v", err)
	}
	for _, bad := range []string{"", "e2b_", "e2b_XYZ", "sk_0123", a2 + "0"} {
		if _, err := k.Team(ctx, bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("key %q: %v", bad, err)
		}
	}
	if _, _, err := k.Create(ctx, "../x", ""); err == nil {
		t.Error("a team name with a path was accepted")
	}
}
