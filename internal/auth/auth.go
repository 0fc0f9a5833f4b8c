package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/store"
)

// Prefix starts every API key; E2B's SDKs refuse keys that do not match ^e2b_[0-9a-f]+$.
const Prefix = "e2b_"

var keyRE = regexp.MustCompile(`^e2b_[0-9a-f]{40}$`)

// ErrInvalidKey is returned for a missing, malformed, unknown or revoked key.
var ErrInvalidKey = errors.New("invalid API key")

// Hash is what the store keeps of a key.
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// Mask shows enough of a key to recognise it.
func Mask(key string) string {
	if len(key) < len(Prefix)+8 {
		return Prefix + "…"
	}
	return key[:len(Prefix)+4] + "…" + key[len(key)-4:]
}

// Keys creates and checks API keys.
type Keys struct{ Store *store.Store }

// Create makes a new key for team (created when it does not exist) and returns it. The key is
// shown once: only its hash is stored.
func (k Keys) Create(ctx context.Context, team, name string) (string, store.APIKey, error) {
	if err := ids.Validate("team", team); err != nil {
		return "", store.APIKey{}, err
	}
	t, err := k.Store.TeamByName(ctx, team)
	if errors.Is(err, store.ErrNotFound) {
		t = store.Team{ID: ids.New(12), Name: team, CreatedAt: time.Now()}
		if err := k.Store.CreateTeam(ctx, t); err != nil {
			return "", store.APIKey{}, err
		}
	} else if err != nil {
		return "", store.APIKey{}, err
	}
	raw := make([]byte, 20)
	if _, err := rand.Read(raw); err != nil {
		return "", store.APIKey{}, err
	}
	key := Prefix + hex.EncodeToString(raw)
	rec := store.APIKey{ID: ids.New(12), TeamID: t.ID, Mask: Mask(key), Name: name, CreatedAt: time.Now()}
	if err := k.Store.CreateAPIKey(ctx, rec, Hash(key)); err != nil {
		return "", store.APIKey{}, err
	}
	return key, rec, nil
}

// Team returns the team of a presented key.
func (k Keys) Team(ctx context.Context, key string) (string, error) {
	if !keyRE.MatchString(key) {
		return "", fmt.Errorf("%w: expected e2b_ and 40 lower-case hex digits", ErrInvalidKey)
	}
	rec, err := k.Store.KeyByHash(ctx, Hash(key))
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("%w: unknown or revoked", ErrInvalidKey)
	}
	if err != nil {
		return "", fmt.Errorf("looking the key up: %w", err)
	}
	return rec.TeamID, nil
}
