package build

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// Step types, as E2B's SDKs send them.
const (
	StepRun     = "RUN"
	StepCopy    = "COPY"
	StepEnv     = "ENV"
	StepWorkdir = "WORKDIR"
	StepUser    = "USER"
)

// Step is one build step (E2B's field names): RUN [cmd, user?], COPY [src, dest, user?, mode?]
// with the hash of its uploaded files, ENV [k1, v1, k2, v2, …], WORKDIR [path], USER [name].
// Force rebuilds this step and every step after it.
type Step struct {
	Type      string   `json:"type"`
	Args      []string `json:"args"`
	FilesHash string   `json:"filesHash,omitempty"`
	Force     bool     `json:"force,omitempty"`
}

// Spec is what a build makes: a base (a template of the team's, or Cell's base image) and
// the steps on it, then a start command running in the template and the command that says it
// is ready.
type Spec struct {
	// FromTemplate names the template to start from ("base" when both are empty).
	FromTemplate string `json:"fromTemplate,omitempty"`
	// FromImage is an OCI image reference; "e2bdev/base" (E2B's default) is Cell's base image.
	FromImage string `json:"fromImage,omitempty"`
	// Registry is how to log in to FromImage's registry (E2B's fromImageRegistry). Never
	// kept: it holds a password.
	Registry json.RawMessage `json:"-"`
	// Force rebuilds every step.
	Force    bool   `json:"force,omitempty"`
	Steps    []Step `json:"steps"`
	StartCmd string `json:"startCmd,omitempty"`
	ReadyCmd string `json:"readyCmd,omitempty"`
}

// Limits of a spec.
const (
	MaxSteps   = 1000
	MaxArgs    = 1000
	MaxArgLen  = 1 << 20
	MaxCmdLen  = 1 << 20
	FilesHashN = 64 // hex digits of a sha256
)

// Validate checks s's shape: known step types with the arguments each takes, hashes of
// uploaded files where COPY needs them. Errors name the step (1-based) and the field.
func (s Spec) Validate() error {
	if len(s.Steps) > MaxSteps {
		return fmt.Errorf("steps: at most %d", MaxSteps)
	}
	if len(s.StartCmd) > MaxCmdLen || len(s.ReadyCmd) > MaxCmdLen {
		return fmt.Errorf("startCmd/readyCmd: at most %d bytes", MaxCmdLen)
	}
	for i, st := range s.Steps {
		if err := st.validate(); err != nil {
			return fmt.Errorf("steps[%d] (%s): %w", i, st.Type, err)
		}
	}
	return nil
}

func (st Step) validate() error {
	if len(st.Args) > MaxArgs {
		return fmt.Errorf("args: at most %d", MaxArgs)
	}
	for _, a := range st.Args {
		if len(a) > MaxArgLen {
			return fmt.Errorf("args: an argument over %d bytes", MaxArgLen)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("args: a NUL byte")
		}
	}
	n := len(st.Args)
	switch st.Type {
	case StepRun:
		if n < 1 || n > 2 {
			return fmt.Errorf("args: want [command, user?], got %d", n)
		}
	case StepCopy:
		if n < 2 || n > 4 {
			return fmt.Errorf("args: want [src, dest, user?, mode?], got %d", n)
		}
		if !isHash(st.FilesHash) {
			return fmt.Errorf("filesHash: want %d lower-case hex digits", FilesHashN)
		}
		if n == 4 && st.Args[3] != "" {
			if _, err := ParseMode(st.Args[3]); err != nil {
				return err
			}
		}
	case StepEnv:
		if n%2 != 0 {
			return fmt.Errorf("args: want key, value pairs, got %d", n)
		}
		for i := 0; i < n; i += 2 {
			if !validEnvName(st.Args[i]) {
				return fmt.Errorf("args[%d]: %q is not an environment variable name", i, st.Args[i])
			}
		}
	case StepWorkdir:
		if n != 1 || st.Args[0] == "" {
			return fmt.Errorf("args: want [path]")
		}
	case StepUser:
		if n != 1 || !validUser(st.Args[0]) {
			return fmt.Errorf("args: want [name], a user name of [a-z_][a-z0-9_-]*")
		}
	default:
		return fmt.Errorf("type: %q is not one of RUN, COPY, ENV, WORKDIR, USER", st.Type)
	}
	return nil
}

// ParseMode reads a COPY mode: octal digits, at most 0o7777.
func ParseMode(s string) (uint32, error) {
	var m uint32
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("mode: %q is not an octal mode", s)
	}
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, fmt.Errorf("mode: %q is not an octal mode", s)
		}
		m = m*8 + uint32(c-'0')
	}
	if m > 0o7777 {
		return 0, fmt.Errorf("mode: %q is over 7777", s)
	}
	return m, nil
}

func isHash(s string) bool {
	if len(s) != FilesHashN {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func validEnvName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i, c := range s {
		if c != '_' && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func validUser(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i, c := range s {
		if c != '_' && (c < 'a' || c > 'z') && (i == 0 || ((c < '0' || c > '9') && c != '-')) {
			return false
		}
	}
	return true
}

// LayerKey is the key of the layer a step makes on the layer parent: a hash of the parent's key
// and the step (its type, arguments and uploaded files), so that a step with the same history
// and content is the same layer.
func LayerKey(parent string, st Step) string {
	h := sha256.New()
	field := func(s string) { fmt.Fprintf(h, "%d:%s", len(s), s) }
	field(parent)
	field(st.Type)
	fmt.Fprintf(h, "%d", len(st.Args))
	for _, a := range st.Args {
		field(a)
	}
	field(st.FilesHash)
	return hex.EncodeToString(h.Sum(nil))
}

// BaseKey is the key of the layer a build starts from: the team (layers are never shared
// between teams), the base template's snapshot (its directory names the machine it was made
// for) and the VM's size.
func BaseKey(team, baseSnapshot string, cpus, memoryMiB int) string {
	h := sha256.New()
	fmt.Fprintf(h, "cell-layer-v1\x00%s\x00%s\x00%d\x00%d", team, baseSnapshot, cpus, memoryMiB)
	return hex.EncodeToString(h.Sum(nil))
}
