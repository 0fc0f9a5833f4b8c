package vmm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cellhq/cell/internal/ids"
)

// maxSocketPath is the usable length of a unix socket path (sun_path is 108 bytes with the NUL).
const maxSocketPath = 107

// longestSocketName is the longest file name Cell puts in a working directory.
const longestSocketName = "console.sock"

// WorkDir is one VM's private directory: sockets, the disk overlay and the console log.
type WorkDir struct {
	Path string
}

// File returns the path of name inside the directory.
func (w WorkDir) File(name string) string { return filepath.Join(w.Path, name) }

// NewWorkDir creates runDir/id with mode 0700. It fails if the directory exists (two VMs never
// share one) or if socket paths inside it would not fit in a unix socket address.
func NewWorkDir(runDir, id string) (WorkDir, error) {
	if err := ids.Validate("vm id", id); err != nil {
		return WorkDir{}, err
	}
	if !filepath.IsAbs(runDir) {
		return WorkDir{}, fmt.Errorf("run dir %q: must be absolute", runDir)
	}
	p := filepath.Join(runDir, id)
	if n := len(filepath.Join(p, longestSocketName)); n > maxSocketPath {
		return WorkDir{}, fmt.Errorf("run dir %q: socket paths would be %d bytes, more than the %d a unix socket allows; choose a shorter run dir", runDir, n, maxSocketPath)
	}
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return WorkDir{}, fmt.Errorf("creating run dir: %w", err)
	}
	// Mkdir is atomic: exactly one caller creates the directory.
	if err := os.Mkdir(p, 0o700); err != nil {
		return WorkDir{}, fmt.Errorf("creating VM directory: %w", err)
	}
	// The umask may have narrowed the mode; it can only have been narrower, but be exact.
	if err := os.Chmod(p, 0o700); err != nil {
		_ = os.Remove(p)
		return WorkDir{}, fmt.Errorf("setting VM directory mode: %w", err)
	}
	return WorkDir{Path: p}, nil
}

// goneDirPrefix starts the name of a VM directory moved aside (MoveAside) to be removed.
const goneDirPrefix = ".gone-"

// IsGoneDir says whether name (an entry of the run dir) is a VM directory moved aside, which no
// live VM uses: a daemon that died before removing it leaves it behind.
func IsGoneDir(name string) bool { return strings.HasPrefix(name, goneDirPrefix) }

// MoveAside renames the directory to a unique name next to it, for a VM with the same id to
// start while this one's is still being removed, and returns it under its new name.
func (w WorkDir) MoveAside() (WorkDir, error) {
	p := filepath.Join(filepath.Dir(w.Path), goneDirPrefix+filepath.Base(w.Path)+"-"+rand.Text()[:8])
	if err := os.Rename(w.Path, p); err != nil {
		return w, fmt.Errorf("moving the VM directory aside: %w", err)
	}
	return WorkDir{Path: p}, nil
}

// Remove deletes the directory and everything in it. Removing a directory that is already gone
// is not an error, so Remove is idempotent.
func (w WorkDir) Remove() error {
	if w.Path == "" {
		return nil
	}
	if err := os.RemoveAll(w.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing VM directory: %w", err)
	}
	return nil
}
