package audit

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The helper process: when the test binary is run with these variables it
// appends events to the named log and exits (see TestConcurrentProcesses).
const (
	helperLogEnv   = "WARDEN_AUDIT_TEST_HELPER_LOG"
	helperCountEnv = "WARDEN_AUDIT_TEST_HELPER_COUNT"
	helperNameEnv  = "WARDEN_AUDIT_TEST_HELPER_NAME"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(helperLogEnv); path != "" {
		os.Exit(helperAppend(path))
	}
	os.Exit(m.Run())
}

func helperAppend(path string) int {
	n, _ := strconv.Atoi(os.Getenv(helperCountEnv))
	l, err := Open(path, quietLogger())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	record(l, 0, n, "proc."+os.Getenv(helperNameEnv))
	if err := l.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// checkChain verifies the log and that it holds want entries, each seq once.
func checkChain(t *testing.T, path string, want int) {
	t.Helper()
	rep := mustVerify(t, path)
	requireOK(t, rep)
	if rep.Entries != want || rep.Last.Seq != uint64(want) || rep.HeadLag != 0 {
		t.Fatalf("%d entries up to %v, head lag %d; want %d, committed", rep.Entries, rep.Last, rep.HeadLag, want)
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	l := openTest(t, "")
	const goroutines, each = 8, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() { record(l, g*each, each, fmt.Sprintf("g%d", g)) })
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	checkChain(t, l.Path(), goroutines*each)
}

// Two Logs on one file have separate file descriptions, as two processes
// do: only the flock keeps their seqs apart.
func TestTwoLogsOnOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, b := openTest(t, path), openTest(t, path)
	const each = 300
	var wg sync.WaitGroup
	for i, l := range []*Log{a, b, a, b} {
		wg.Go(func() { record(l, i*each, each, fmt.Sprintf("log%d", i)) })
	}
	wg.Wait()
	a.Close()
	b.Close()
	checkChain(t, path, 4*each)
}

func TestConcurrentProcesses(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	const procs, each = 3, 300
	var cmds []*exec.Cmd
	for i := range procs {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperLogEnv+"="+path, helperCountEnv+"="+strconv.Itoa(each), helperNameEnv+"="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	// And this process too, at the same time.
	l := openTest(t, path)
	record(l, 0, each, "proc.parent")
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper process: %v", err)
		}
	}
	l.Close()
	checkChain(t, path, (procs+1)*each)
	for _, name := range []string{"proc.0", "proc.1", "proc.2", "proc.parent"} {
		p, err := Read(path, Filter{Action: name, Limit: MaxLimit})
		if err != nil || len(p.Entries) != each {
			t.Errorf("%s: %d entries, %v", name, len(p.Entries), err)
		}
	}
}

// Readers and Verify run beside writers without a lock and never see a
// problem that is not there.
func TestVerifyWhileWriting(t *testing.T) {
	l := openTest(t, "")
	record(l, 0, 10, "w")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3000 {
			record(l, i, 1, "w")
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		rep := mustVerify(t, l.Path())
		if !rep.OK {
			t.Fatalf("Verify beside a writer: %+v", rep.Problems)
		}
		if _, err := Tail(l.Path(), 5); err != nil {
			t.Fatal(err)
		}
	}
}

// A process that holds the lock and never lets go (stopped in a debugger,
// say) costs audit lines, not stalled callers: one Record waits lockWait,
// the ones after it fail at once, and appends resume when the lock is free.
func TestStuckLockDoesNotStallCallers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var logs syncBuffer
	l, err := open(path, slog.New(slog.NewTextHandler(&logs, nil)), options{lockWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	record(l, 0, 1, "before")
	stuck, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if err := lockFile(stuck, time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	record(l, 1, 1, "lost")
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Fatalf("first Record behind a stuck lock took %v, want about lockWait", d)
	}
	start = time.Now()
	record(l, 2, 20, "lost")
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("20 more Records took %v: callers queue behind the stuck lock", d)
	}
	if !strings.Contains(logs.String(), "cannot append") {
		t.Fatal("the failure was not logged")
	}
	unlockFile(stuck)
	record(l, 22, 1, "after")
	l.Close()
	p, err := Read(path, Filter{})
	if err != nil || len(p.Entries) != 2 || p.Entries[1].Action != "after" {
		t.Fatalf("entries = %+v, %v", p.Entries, err)
	}
	requireOK(t, mustVerify(t, path))
}
