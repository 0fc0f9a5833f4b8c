package ids

import (
	"crypto/rand"
	"fmt"
)

// MaxLen bounds every identifier Cell accepts.
const MaxLen = 64

// idAlphabet is what generated ids are made of. It has no dash because E2B's routing splits
// `{port}-{sandboxID}` on the first dash.
const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// New returns a fresh random identifier of n characters from [a-z0-9].
func New(n int) string {
	out := make([]byte, 0, n)
	buf := make([]byte, n+8)
	// Rejection sampling keeps every character equally likely: 252 is the largest multiple of 36
	// below 256.
	const limit = 256 - 256%len(idAlphabet)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			// crypto/rand does not fail on Linux ≥ 3.17; a failure means the host is broken.
			panic(fmt.Sprintf("ids: reading randomness: %v", err))
		}
		for _, c := range buf {
			if int(c) < limit && len(out) < n {
				out = append(out, idAlphabet[int(c)%len(idAlphabet)])
			}
		}
	}
	return string(out)
}

// NewSandboxID returns a sandbox id: 20 characters, about 103 bits of randomness.
func NewSandboxID() string { return New(20) }

// Validate checks that s is a well-formed identifier of the given kind ("sandbox id",
// "template", …): 1 to MaxLen characters from [a-z0-9_-], starting with a letter or digit. The
// kind names the field in the error.
func Validate(kind, s string) error {
	if s == "" {
		return fmt.Errorf("%s: must not be empty", kind)
	}
	if len(s) > MaxLen {
		return fmt.Errorf("%s: %d characters, at most %d allowed", kind, len(s), MaxLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		default:
			return fmt.Errorf("%s %q: character %q at %d not allowed (use a-z, 0-9, '-' and '_', starting with a letter or digit)", kind, s, c, i)
		}
	}
	return nil
}
