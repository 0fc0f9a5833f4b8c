package process

import (
	"errors"
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Identity is who a process runs as.
type Identity struct {
	Name     string
	UID, GID uint32
	Groups   []uint32
	Home     string
}

// Resolve makes p absolute for id as E2B's envd does: "~" and "~/…" are id's home, a relative
// path is from id's home. Another user's home ("~name") is not expanded: an error.
func (id Identity) Resolve(p string) (string, error) {
	if rest, ok := strings.CutPrefix(p, "~"); ok {
		if rest != "" && rest[0] != '/' {
			return "", fmt.Errorf("%q: another user's home (~name) is not expanded", p)
		}
		p = id.Home + rest
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(id.Home, p)
	}
	return filepath.Clean(p), nil
}

// Users resolves user names from the guest's /etc/passwd and /etc/group, remembering answers
// until either file changes (parsing both costs about half a millisecond under TCG, on every
// command). The zero value is ready to use.
type Users struct {
	mu    sync.Mutex
	stamp [2]fileStamp
	cache map[string]Identity
}

type fileStamp struct {
	ino, size int64
	mtimeNs   int64
}

func stampOf(path string) fileStamp {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileStamp{}
	}
	return fileStamp{ino: int64(st.Ino), size: st.Size, mtimeNs: st.Mtim.Nano()}
}

// Lookup resolves name.
func (u *Users) Lookup(name string) (Identity, error) {
	now := [2]fileStamp{stampOf("/etc/passwd"), stampOf("/etc/group")}
	u.mu.Lock()
	if u.stamp != now || u.cache == nil {
		u.cache, u.stamp = map[string]Identity{}, now
	}
	id, ok := u.cache[name]
	u.mu.Unlock()
	if ok {
		return id, nil
	}
	id, err := LookupUser(name)
	if err != nil {
		return id, err
	}
	u.mu.Lock()
	if u.stamp == now {
		u.cache[name] = id
	}
	u.mu.Unlock()
	return id, nil
}

// LookupUser resolves a user name from the guest's /etc/passwd and /etc/group, uncached.
func LookupUser(name string) (Identity, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return Identity{}, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return Identity{}, fmt.Errorf("user %s: %w", name, err)
	}
	id := Identity{Name: name, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				id.Groups = append(id.Groups, uint32(n))
			}
		}
	}
	return id, nil
}
