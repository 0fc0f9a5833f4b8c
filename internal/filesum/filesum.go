package filesum

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ChunkSize is the unit a digest is taken over.
const ChunkSize = 1 << 20

// Prefix starts every digest: the scheme and its version.
const Prefix = "cs1:"

// zeroChunk is the sha256 of a chunk of zeros.
var zeroChunk = sha256.Sum256(make([]byte, ChunkSize))

// File returns the digest of the file at path.
func File(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	return Of(ctx, f)
}

// Of returns the digest of f's content, read with ReadAt; holes (SEEK_DATA) are not read.
func Of(ctx context.Context, f *os.File) (string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	size := st.Size()
	top := sha256.New()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(size))
	top.Write(hdr[:])
	buf := make([]byte, ChunkSize)
	h := sha256.New()
	fd := int(f.Fd())
	for off := int64(0); off < size; off += ChunkSize {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n := min(ChunkSize, size-off)
		// A chunk with no data in it is zeros: its digest is known.
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if n == ChunkSize && (errors.Is(err, unix.ENXIO) || err == nil && data >= off+n) {
			top.Write(zeroChunk[:])
			continue
		}
		if _, err := f.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading %s at %d: %w", f.Name(), off, err)
		}
		h.Reset()
		h.Write(buf[:n])
		top.Write(h.Sum(nil))
	}
	return Prefix + hex.EncodeToString(top.Sum(nil)), nil
}

// Verify checks that the file at path has the digest want.
func Verify(ctx context.Context, path, want string) error {
	if !strings.HasPrefix(want, Prefix) {
		return fmt.Errorf("%s: digest %q is not one this version makes", path, want)
	}
	got, err := File(ctx, path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: %s is %s, recorded %s", ErrMismatch, path, got, want)
	}
	return nil
}

// ErrMismatch is wrapped when a file's content is not what its digest says.
var ErrMismatch = errors.New("file content does not match its digest")
