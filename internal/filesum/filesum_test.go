package filesum

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestDigestIgnoresHoles: the same content gives the same digest whether its zeros are holes
// or written, and any changed byte or size changes it.
func TestDigestIgnoresHoles(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	size := int64(5*ChunkSize + 123)
	sparse := filepath.Join(dir, "sparse")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{10, 3*ChunkSize + 5, size - 3} {
		if _, err := f.WriteAt([]byte("abc"), off); err != nil {
			t.Fatal(err)
		}
	}
	_ = f.Close()
	full, err := os.ReadFile(sparse)
	if err != nil {
		t.Fatal(err)
	}
	dense := filepath.Join(dir, "dense")
	if err := os.WriteFile(dense, full, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := File(ctx, sparse)
	if err != nil {
		t.Fatal(err)
	}
	b, err := File(ctx, dense)
	if err != nil || a != b {
		t.Fatalf("sparse %s, dense %s (%v)", a, b, err)
	}
	if err := Verify(ctx, dense, a); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func([]byte) []byte{
		"a byte in a hole": func(b []byte) []byte { b[2*ChunkSize+7] = 1; return b },
		"a byte of data":   func(b []byte) []byte { b[11] = 'x'; return b },
		"one byte longer":  func(b []byte) []byte { return append(b, 0) },
		"one byte shorter": func(b []byte) []byte { return b[:len(b)-1] },
	} {
		p := filepath.Join(dir, "changed")
		if err := os.WriteFile(p, change(bytes.Clone(full)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := Verify(ctx, p, a); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: %v", name, err)
		}
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if e, err := File(ctx, empty); err != nil || e == a {
		t.Errorf("empty: %s %v", e, err)
	}
	if err := Verify(ctx, dense, "sha256:abc"); err == nil {
		t.Error("a digest of another scheme was accepted")
	}
}

func BenchmarkSparseMemFile(b *testing.B) {
	// A 512 MiB memory file with 128 MiB of data, as a base template's.
	p := filepath.Join(b.TempDir(), "mem")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	_ = f.Truncate(512 << 20)
	chunk := bytes.Repeat([]byte{7}, 1<<20)
	for i := int64(0); i < 128; i++ {
		_, _ = f.WriteAt(chunk, i*4<<20)
	}
	_ = f.Close()
	b.SetBytes(128 << 20)
	for b.Loop() {
		if _, err := File(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
}
