package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cellhq/cell/internal/sandbox"
)

// env is what every test needs: the binaries and the data directory with the built image.
type env struct {
	cell, envd, home string
}

var testEnv env // set once by TestMain, read-only afterwards

func TestMain(m *testing.M) {
	logrus.SetOutput(io.Discard) // gvisor-tap-vsock's switch, in in-process runtimes (as in cmd/cell)
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	if code == 0 {
		code = m.Run()
	}
	if hosts != nil {
		hosts.close()
	}
	os.Exit(code)
}

func setup() (int, error) {
	cell := os.Getenv("CELL_BIN")
	if cell == "" {
		dir, err := os.MkdirTemp("", "cell-e2e-bin-")
		if err != nil {
			return 1, err
		}
		root, err := filepath.Abs("../..")
		if err != nil {
			return 1, err
		}
		// The same flags as the Makefile, so that envd (and so the image's recipe hash) matches.
		for _, b := range [][3]string{{"cell", "./cmd/cell", ""}, {"envd", "./cmd/envd", "-s -w"}} {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags="+b[2], "-o", filepath.Join(dir, b[0]), b[1])
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				return 1, fmt.Errorf("building %s: %v\n%s", b[0], err, out)
			}
		}
		cell = filepath.Join(dir, "cell")
	}
	home := os.Getenv("CELL_HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return 1, err
		}
		home = filepath.Join(h, ".local", "share", "cell")
	}
	testEnv = env{cell: cell, envd: filepath.Join(filepath.Dir(cell), "envd"), home: home}
	// The image must exist: these tests boot real VMs from it.
	out, err := exec.Command(cell, "--home", home, "doctor").CombinedOutput()
	if err != nil {
		return 1, fmt.Errorf("the guest image is not ready (run `make image` first):\n%s", out)
	}
	return 0, nil
}

// runDir makes a short private run directory for one test's VMs.
func runDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cell-e2e-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

type cliResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// cli runs the cell binary with stdin, in a run directory of its own.
func cli(t *testing.T, rd string, stdin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testEnv.cell, append([]string{"--home", testEnv.home}, args...)...)
	cmd.Env = append(os.Environ(), "CELL_RUN_DIR="+rd)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running cell %v: %v", args, err)
		}
		res.code = ee.ExitCode()
	}
	return res
}

// newRuntime returns an in-process runtime on the built image, with VMs in a test run dir.
func newRuntime(t *testing.T, rd string, mutate func(*sandbox.RuntimeConfig)) *sandbox.Runtime {
	t.Helper()
	cfg := sandbox.RuntimeConfig{Home: testEnv.home, Envd: testEnv.envd, RunDir: rd, Attempts: 1,
		BootTimeout: 60 * time.Second, DieWithParent: true}
	if mutate != nil {
		mutate(&cfg)
	}
	rt, _, err := sandbox.NewRuntime(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// qemuProcesses lists live QEMU processes whose command line mentions dir.
func qemuProcesses(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cl := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		if strings.Contains(cl, "qemu-system") && strings.Contains(cl, dir) {
			// A zombie is not running; it is reaped by its parent shortly.
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
				continue
			}
			found = append(found, e.Name())
		}
	}
	return found
}

// assertNothingLeft checks that no QEMU of dir runs and dir is empty.
func assertNothingLeft(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs := qemuProcesses(t, dir)
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(procs) == 0 && len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("left behind: qemu pids %v, run dir entries %v", procs, names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
