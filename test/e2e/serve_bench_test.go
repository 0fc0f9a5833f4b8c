package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"sort"
	"testing"
	"time"

	"github.com/cellhq/cell/pkg/client"
)

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// timedExec runs cmd in sb, requires it to succeed, and returns how long the round trip took.
func timedExec(ctx context.Context, b *testing.B, sb *client.Sandbox, cmd string) time.Duration {
	b.Helper()
	t0 := time.Now()
	res, err := sb.Exec(ctx, cmd, "", nil, io.Discard, io.Discard)
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("%s: %v %+v", cmd, err, res)
	}
	return time.Since(t0)
}

// BenchmarkServe measures `cell serve` end to end through its proxy with the Go client:
// create, create and the first command, resume and the first command after it, a `true` command
// (round trip, and Cell's overhead: the round trip minus the run time envd measured), and 100 MB
// through /files each way.
func BenchmarkServe(b *testing.B) {
	d := newDaemon(b)
	_, c := d.serve(b)
	ctx := context.Background()

	b.Run("Create", func(b *testing.B) {
		var ds []time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			info, err := c.Create(ctx, client.CreateOptions{Timeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
			_ = c.Kill(ctx, info.SandboxID)
		}
		b.ReportMetric(float64(median(ds).Microseconds())/1000, "median-ms")
	})

	// Create and the first command, and how long that first `bash -l -c true` ran inside the
	// guest (envd's measure: a fresh QEMU translates the guest's code anew).
	b.Run("CreateFirstRun", func(b *testing.B) {
		var total, inside []time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			info, err := c.Create(ctx, client.CreateOptions{Timeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			sb, err := c.Connect(ctx, info.SandboxID)
			if err != nil {
				b.Fatal(err)
			}
			res, err := sb.Exec(ctx, "true", "", nil, io.Discard, io.Discard)
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("%v %+v", err, res)
			}
			total = append(total, time.Since(t0))
			inside = append(inside, res.Lifetime)
			_ = c.Kill(ctx, info.SandboxID)
		}
		b.ReportMetric(float64(median(total).Microseconds())/1000, "median-ms")
		b.ReportMetric(float64(median(inside).Microseconds())/1000, "first-bash-in-guest-ms")
	})

	// Resume (the sandbox paused a moment before, its RAM saved) and the first command after
	// it: the resumed QEMU translates the guest's code anew, so that command pays for it.
	b.Run("ResumeFirstRun", func(b *testing.B) {
		info, err := c.Create(ctx, client.CreateOptions{Timeout: 30 * time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = c.Kill(ctx, info.SandboxID) }()
		var resumes, firsts []time.Duration
		for i := 0; i < b.N; i++ {
			if err := c.Pause(ctx, info.SandboxID, true); err != nil {
				b.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond) // a resume comes later than the pause in use
			t0 := time.Now()
			if err := c.Resume(ctx, info.SandboxID, 30*time.Minute); err != nil {
				b.Fatal(err)
			}
			resumes = append(resumes, time.Since(t0))
			sb, err := c.Connect(ctx, info.SandboxID)
			if err != nil {
				b.Fatal(err)
			}
			firsts = append(firsts, timedExec(ctx, b, sb, "true"))
		}
		b.ReportMetric(float64(median(resumes).Microseconds())/1000, "resume-median-ms")
		b.ReportMetric(float64(median(firsts).Microseconds())/1000, "first-command-median-ms")
	})

	info, err := c.Create(ctx, client.CreateOptions{Timeout: 30 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = c.Kill(ctx, info.SandboxID) }()
	sb, err := c.Connect(ctx, info.SandboxID)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("ExecTrue", func(b *testing.B) {
		var rt, over []time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			res, err := sb.Exec(ctx, "true", "", nil, io.Discard, io.Discard)
			d := time.Since(t0)
			if err != nil || res.ExitCode != 0 || res.Lifetime == 0 {
				b.Fatalf("%v %+v", err, res)
			}
			rt = append(rt, d)
			over = append(over, d-res.Lifetime)
		}
		b.ReportMetric(float64(median(rt).Microseconds())/1000, "median-ms")
		b.ReportMetric(float64(median(over).Microseconds())/1000, "overhead-median-ms")
	})
	const size = 100 << 20
	data := make([]byte, size)
	_, _ = rand.Read(data)
	b.Run("Upload100MB", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			if err := sb.Upload(ctx, "/tmp/big.bin", "", bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Download100MB", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			n, err := sb.Download(ctx, "/tmp/big.bin", "", io.Discard)
			if err != nil || n != size {
				b.Fatal(n, err)
			}
		}
	})
}

// BenchmarkServePool measures a create served from the warm pool (the pool is refilled, untimed,
// between creates) and the first command in such a sandbox.
func BenchmarkServePool(b *testing.B) {
	d := newDaemon(b)
	srv, c := d.serve(b, "--pool", "base=2")
	ctx := context.Background()
	var creates, first, firstPy []time.Duration
	for i := 0; i < b.N; i++ {
		poolReady(b, srv.url, 2)
		t0 := time.Now()
		info, err := c.Create(ctx, client.CreateOptions{Timeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		creates = append(creates, time.Since(t0))
		sb, err := c.Connect(ctx, info.SandboxID)
		if err != nil {
			b.Fatal(err)
		}
		first = append(first, timedExec(ctx, b, sb, "true"))
		firstPy = append(firstPy, timedExec(ctx, b, sb, "python3 -c pass"))
		_ = c.Kill(ctx, info.SandboxID)
	}
	b.ReportMetric(float64(median(creates).Microseconds())/1000, "create-median-ms")
	b.ReportMetric(float64(median(first).Microseconds())/1000, "first-command-median-ms")
	b.ReportMetric(float64(median(firstPy).Microseconds())/1000, "first-python-median-ms")
}
