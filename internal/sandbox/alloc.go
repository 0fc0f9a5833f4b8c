package sandbox

import (
	"io/fs"
	"syscall"
)

// allocated is the space a file takes on disk (sparse files count only what is written).
func allocated(info fs.FileInfo) (int64, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Blocks * 512, true
}
