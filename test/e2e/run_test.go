package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

func TestRunLanguages(t *testing.T) {
	rd := runDir(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"python3", "-c", "print(6*7)"}, "42\n"},
		{[]string{"node", "-e", "console.log([1,2,3].map(x => x * 2).join(','))"}, "2,4,6\n"},
		{[]string{"bash", "-c", "echo $((6*7)) from $0"}, "42 from bash\n"},
		// E2B's variables: the sandbox's id is its host name.
		{[]string{"sh", "-c", `test "$E2B_SANDBOX_ID" = "$(hostname)" && echo $E2B_SANDBOX`}, "true\n"},
		// envd (PID 1) mounted /proc once, not a second proc on top of the first.
		{[]string{"grep", "-c", "^proc /proc ", "/proc/mounts"}, "1\n"},
	}
	for _, c := range cases {
		r := cli(t, rd, "", append([]string{"run", "--"}, c.args...)...)
		if r.code != 0 || r.stdout != c.want {
			t.Errorf("%v: code %d stdout %q stderr %q", c.args, r.code, r.stdout, r.stderr)
		}
	}
	assertNothingLeft(t, rd)
}

func TestRunExitCodesEnvAndStreams(t *testing.T) {
	rd := runDir(t)
	// The issue's own example.
	r := cli(t, rd, "", "run", "--memory", "512", "--timeout", "30s", "--env", "GREETING=hi", "--",
		"bash", "-c", "echo $GREETING; exit 7")
	if r.code != 7 || r.stdout != "hi\n" {
		t.Fatalf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// stdout and stderr stay separate and each in order.
	r = cli(t, rd, "", "run", "--", "bash", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done")
	if r.stdout != "out1\nout2\nout3\n" || r.stderr != "err1\nerr2\nerr3\n" || r.code != 0 {
		t.Fatalf("stdout %q stderr %q code %d", r.stdout, r.stderr, r.code)
	}
	// Killed by a signal: 128+N.
	r = cli(t, rd, "", "run", "--", "bash", "-c", "kill -TERM $$")
	if r.code != 128+15 {
		t.Fatalf("SIGTERM: code %d stderr %q", r.code, r.stderr)
	}
	// Unknown command: 127 with a message.
	r = cli(t, rd, "", "run", "--", "no-such-command")
	if r.code != 127 || !strings.Contains(r.stderr, "no-such-command") {
		t.Fatalf("not found: code %d stderr %q", r.code, r.stderr)
	}
	assertNothingLeft(t, rd)
}

func TestRunUserCwdStdin(t *testing.T) {
	rd := runDir(t)
	r := cli(t, rd, "", "run", "--", "bash", "-c", "id -u; id -un; pwd; echo $HOME")
	if r.stdout != "1000\nuser\n/home/user\n/home/user\n" {
		t.Fatalf("default user: %q %q", r.stdout, r.stderr)
	}
	// Under TCG, processes are not randomised (QEMU's translations are then reused), and the
	// sandbox's root can turn it back on.
	r = cli(t, rd, "", "run", "--accel", "tcg", "--user", "root", "--", "bash", "-c",
		"cat /proc/sys/kernel/randomize_va_space; sysctl -qw kernel.randomize_va_space=2 && cat /proc/sys/kernel/randomize_va_space")
	if r.stdout != "0\n2\n" {
		t.Fatalf("address-space randomisation under TCG: %q %q", r.stdout, r.stderr)
	}
	r = cli(t, rd, "", "run", "--user", "root", "--cwd", "/tmp", "--", "bash", "-c", "id -u; pwd; sudo -n true 2>/dev/null; echo $?")
	if r.stdout != "0\n/tmp\n0\n" {
		t.Fatalf("root: %q %q", r.stdout, r.stderr)
	}
	r = cli(t, rd, "", "run", "--", "sudo", "-n", "id", "-u")
	if r.stdout != "0\n" {
		t.Fatalf("passwordless sudo: %q %q", r.stdout, r.stderr)
	}
	in := strings.Repeat("line of input\n", 20000) // 280 kB
	sum := sha256.Sum256([]byte(in))
	r = cli(t, rd, in, "run", "--", "sha256sum")
	if want := hex.EncodeToString(sum[:]) + "  -\n"; r.stdout != want {
		t.Fatalf("stdin checksum: %q want %q (stderr %q)", r.stdout, want, r.stderr)
	}
	assertNothingLeft(t, rd)
}

// TestRunTTY: cell run -t runs the command in a pseudo-terminal (as docker run -t): input goes to
// the terminal, output comes from it, the exit code and --timeout work as without it.
func TestRunTTY(t *testing.T) {
	rd := runDir(t)
	r := cli(t, rd, "echo from-$((6*7)); tty; test -t 0 -a -t 1 && echo both-ttys; exit 5\n", "run", "-t", "--env", "V=v1", "--", "bash", "--norc")
	if r.code != 5 || !strings.Contains(r.stdout, "from-42") || !strings.Contains(r.stdout, "/dev/pts/") || !strings.Contains(r.stdout, "both-ttys") {
		t.Fatalf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = cli(t, rd, "", "run", "-t", "--cwd", "/tmp", "--env", "V=v1", "--", "sh", "-c", "echo $V $(pwd) $TERM")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "v1 /tmp ") {
		t.Fatalf("env and cwd: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, rd, "", "run", "-t", "--timeout", "1s", "--", "sleep", "60"); r.code != 124 {
		t.Fatalf("--timeout with -t: code %d stderr %q", r.code, r.stderr)
	}
	if r := cli(t, rd, "", "run", "-t", "--", "no-such-command"); r.code != 127 {
		t.Fatalf("not found with -t: code %d stderr %q", r.code, r.stderr)
	}
	assertNothingLeft(t, rd)
}

func TestRunTimeout(t *testing.T) {
	rd := runDir(t)
	r := cli(t, rd, "", "run", "--timeout", "2s", "--", "bash", "-c", "echo started; sleep 60")
	if r.code != 124 || r.stdout != "started\n" || !strings.Contains(r.stderr, "timed out after 2s") {
		t.Fatalf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r.took > 30*time.Second {
		t.Fatalf("timeout took %v", r.took)
	}
	assertNothingLeft(t, rd)
}

func TestLargeOutputChecksum(t *testing.T) {
	rt := newRuntime(t, runDir(t), nil)
	ctx := context.Background()
	sb, err := rt.Boot(ctx, sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	const size = 50 << 20
	h := sha256.New()
	var errOut strings.Builder
	n := &countWriter{w: h}
	res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "bash", Args: []string{"-c",
		"head -c 52428800 /dev/urandom | tee /tmp/blob; sha256sum /tmp/blob >&2"}}, nil, n, &errOut, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v stderr %q", res, err, errOut.String())
	}
	got := hex.EncodeToString(h.Sum(nil))
	if n.n != size || !strings.HasPrefix(errOut.String(), got) {
		t.Fatalf("streamed %d bytes with sha256 %s; guest says %q", n.n, got, errOut.String())
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return c.w.Write(p) }

func TestQEMUKilledMidCommand(t *testing.T) {
	rt := newRuntime(t, runDir(t), nil)
	ctx := context.Background()
	sb, err := rt.Boot(ctx, sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		_, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "sleep", Args: []string{"600"}}, nil, io.Discard, io.Discard,
			func(uint32) { once.Do(func() { close(started) }) })
		done <- err
	}()
	<-started
	killed := time.Now()
	if err := syscall.Kill(sb.VM.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		took := time.Since(killed)
		if !errors.Is(err, sandbox.ErrVMExited) || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("error %v, want one saying the VM was killed", err)
		}
		if took > 2*time.Second {
			t.Fatalf("error came %v after the kill, want ≤ 2s", took)
		}
		t.Logf("error after %v: %v", took, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of QEMU's death")
	}
}

func TestGuestNeverReady(t *testing.T) {
	rd := runDir(t)
	// The kernel boots, but init is a shell that never starts envd.
	rt := newRuntime(t, rd, func(c *sandbox.RuntimeConfig) { c.BootTimeout = 4 * time.Second })
	start := time.Now()
	_, err := rt.Boot(context.Background(), sandbox.Options{KernelArgs: []string{"init=/bin/sh", "loglevel=7"}})
	var be *vmm.BootError
	if !errors.As(err, &be) {
		t.Fatalf("err = %v, want a BootError", err)
	}
	if !strings.Contains(err.Error(), "did not become ready") || !strings.Contains(be.ConsoleTail, "Run /bin/sh as init process") {
		t.Fatalf("error lacks the reason or the console tail:\n%v", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	assertNothingLeft(t, rd)
}

func TestQEMUDiesDuringBoot(t *testing.T) {
	rd := runDir(t)
	rt := newRuntime(t, rd, nil)
	// init exits at once: the kernel panics, and with panic=-1 QEMU exits.
	_, err := rt.Boot(context.Background(), sandbox.Options{KernelArgs: []string{"init=/bin/false"}})
	if !errors.Is(err, vmm.ErrQEMUExited) || !strings.Contains(err.Error(), "Kernel panic") {
		t.Fatalf("err = %v, want QEMU's exit with the panic in the console tail", err)
	}
	assertNothingLeft(t, rd)
}

func TestPowerOff(t *testing.T) {
	rt := newRuntime(t, runDir(t), nil)
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sb.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	if r := sb.VM.ExitReason(); r != "exit status 0" {
		t.Fatalf("QEMU ended with %s, want a clean exit", r)
	}
}

func TestNoLeaksSequentialAndConcurrent(t *testing.T) {
	rd := runDir(t)
	rt := newRuntime(t, rd, func(c *sandbox.RuntimeConfig) { c.MaxVMs = 8 })
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	one := func(i int) error {
		sb, err := rt.Boot(ctx, sandbox.Options{MemoryMiB: 256, CPUs: 1})
		if err != nil {
			return err
		}
		defer sb.Close()
		var out strings.Builder
		res, err := sb.Run(ctx, sandbox.RunSpec{Cmd: "echo", Args: []string{"run", string(rune('a' + i%26))}}, nil, &out, io.Discard, nil)
		if err != nil {
			return err
		}
		if res.ExitCode != 0 || out.String() != "run "+string(rune('a'+i%26))+"\n" {
			return errors.New("unexpected output " + out.String())
		}
		return nil
	}
	for i := 0; i < 20; i++ {
		if err := one(i); err != nil {
			t.Fatalf("sequential run %d: %v", i, err)
		}
	}
	assertNothingLeft(t, rd)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- one(i) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent run: %v", err)
		}
	}
	assertNothingLeft(t, rd)
}

func TestBackpressure(t *testing.T) {
	rt := newRuntime(t, runDir(t), func(c *sandbox.RuntimeConfig) { c.MaxVMs = 1 })
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The only slot is taken: a second boot waits, and gives up when its context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := rt.Boot(ctx, sandbox.Options{}); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "slot") {
		t.Fatalf("second boot: %v, want a slot wait ended by the context", err)
	}
	_ = sb.Close()
	sb2, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatalf("boot after the slot was freed: %v", err)
	}
	_ = sb2.Close()
}

func TestOrphansAreReaped(t *testing.T) {
	rd := runDir(t)
	// Children orphaned by their parent shell are re-parented to envd's PID 1, which must reap them.
	r := cli(t, rd, "", "run", "--", "bash", "-c",
		`for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 1.5; ps -eo stat=,comm= | awk '$1 ~ /^Z/' | wc -l`)
	if r.code != 0 || r.stdout != "0\n" {
		t.Fatalf("zombies left: %q (stderr %q)", r.stdout, r.stderr)
	}
	assertNothingLeft(t, rd)
}

// bootAndRun boots a sandbox, runs cmd in it (as the default user), and returns its stdout; the
// test fails if either fails.
func bootAndRun(t *testing.T, cmd string, args ...string) string {
	t.Helper()
	rt := newRuntime(t, runDir(t), nil)
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	var out bytes.Buffer
	res, err := sb.Run(context.Background(), sandbox.RunSpec{Cmd: cmd, Args: args}, nil, &out, io.Discard, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s: %v %+v", cmd, err, res)
	}
	return out.String()
}

// TestDiskReadahead checks that the guest takes the disk's advertised optimal I/O size for its
// readahead (twice it), which makes a cold boot's reads few and large.
func TestDiskReadahead(t *testing.T) {
	if got, want := strings.TrimSpace(bootAndRun(t, "cat", "/sys/block/vda/queue/read_ahead_kb")), strconv.Itoa(2*vmm.DiskOptimalIO>>10); got != want {
		t.Fatalf("the guest's readahead is %s KiB, want %s", got, want)
	}
}

// TestKernelKeepsInitMemory: the guest kernel keeps its init memory instead of freeing it
// (images/kernel/build.sh): under TCG the reuse of those pages invalidated thousands of
// translations while envd started. The kernel logs the init memory it frees before it runs init.
func TestKernelKeepsInitMemory(t *testing.T) {
	log := bootAndRun(t, "dmesg")
	if !strings.Contains(log, "Run /usr/bin/envd as init process") {
		t.Fatalf("the kernel log does not reach init:\n%s", log)
	}
	if strings.Contains(log, "(initmem)") {
		t.Fatalf("the kernel freed its init memory:\n%s", log)
	}
}

// TestResolverInTmpfs: the resolver file envd writes at every boot lives in /run (a tmpfs) behind
// /etc/resolv.conf, so a boot does not rewrite a file on the ext4 root (images/rootfs/build.sh).
func TestResolverInTmpfs(t *testing.T) {
	r := cli(t, runDir(t), "", "run", "--", "bash", "-c",
		`stat -L -f -c %T /etc/resolv.conf; readlink /etc/resolv.conf; cat /etc/resolv.conf`)
	want := "tmpfs\n../run/resolv.conf\nnameserver " + netstack.GatewayIP.String() + "\noptions edns0 trust-ad\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("got %q (exit %d, stderr %q), want %q", r.stdout, r.code, r.stderr, want)
	}
}

// maxBootTranslations: 12 boots here translated 59,900-62,000 blocks; with the kernel and QEMU
// before the changes named below, ~69,000.
const maxBootTranslations = 65000

// TestColdBootTranslations bounds the blocks of guest code TCG translates to boot a sandbox to
// envd ready (QEMU's `info jit`), the main cost of a cold boot here. The kernel's code had been
// translated twice over: once before the kernel turned SSE on and again after, and once for an
// entry from an interrupt (null SS) and again for one from a system call (see
// images/kernel/build.sh and images/qemu/tcg-ss32.patch).
func TestColdBootTranslations(t *testing.T) {
	rt := newRuntime(t, runDir(t), func(c *sandbox.RuntimeConfig) { c.Accel = vmm.AccelTCG })
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	n, err := sb.VM.TranslationBlocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d translation blocks to envd ready", n)
	if n > maxBootTranslations {
		t.Fatalf("a cold boot translated %d blocks, over %d", n, maxBootTranslations)
	}
}

// TestCellQEMU: sandboxes run Cell's own QEMU build (images/qemu), not Debian's, and it is
// statically linked, which is what makes it start in a few milliseconds.
func TestCellQEMU(t *testing.T) {
	rt := newRuntime(t, runDir(t), nil)
	if !strings.HasPrefix(rt.Image.QEMU, filepath.Join(testEnv.home, "images", "qemu")+"/") {
		t.Fatalf("the runtime's QEMU %s is not the image's build", rt.Image.QEMU)
	}
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sb.VM.PID))
	if err != nil {
		t.Fatal(err)
	}
	if exe != rt.Image.QEMU {
		t.Fatalf("the VM runs %s, want %s", exe, rt.Image.QEMU)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked (it has a program interpreter)", exe)
		}
	}
}

// TestKernelStripped: the kernel QEMU loads has no symbol table (QEMU would load and sort it at
// every start, ~4 ms of a cold boot), and its symbols are kept next to it for profiling; a
// sandbox boots from it.
func TestKernelStripped(t *testing.T) {
	rt := newRuntime(t, runDir(t), nil)
	f, err := elf.Open(rt.Image.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if s := f.Section(".symtab"); s != nil {
		t.Fatalf("%s has a symbol table (%d bytes)", rt.Image.Kernel, s.Size)
	}
	m, err := os.ReadFile(rt.Image.Kernel + ".map")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(m, []byte(" T start_kernel\n")) {
		t.Fatalf("%s.map does not list start_kernel", rt.Image.Kernel)
	}
	sb, err := rt.Boot(context.Background(), sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
}
