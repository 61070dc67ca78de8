// Package wardentest drives a real `warden serve` process for end-to-end
// tests, the way net/http/httptest drives a real HTTP server: every
// listener on a free loopback port, the real CLI against the same data
// directory, and real MQTT clients (raw paho for checking exactly what
// the broker answers, the Go SDK for what a device sees).
//
// A test package builds the binary once in its TestMain:
//
//	func TestMain(m *testing.M) { wardentest.Main(m) }
//
// and then starts as many servers as it likes:
//
//	s := wardentest.Start(t, t.TempDir())
//	dev := s.AddDevice("pump7")
//	rc := wardentest.MustConnectRaw(t, s.MQTTS, dev, wardentest.RawOpts{Clean: true})
//
// Only test code should import it: it imports "testing" and reports every
// failure through testing.TB.
package wardentest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// BinaryEnv names the environment variable that holds the path of the
// warden binary the harness runs. Main sets it after building; set it
// beforehand to test a binary built elsewhere (then Main builds nothing and
// E2E_RACE has no effect). The process environment, rather than a package
// variable, carries the path because it is one fact about the whole test
// binary, decided once before any test runs.
const BinaryEnv = "WARDENTEST_BINARY"

// raceEnv, when set to anything, makes BuildWarden build with -race so
// that the server itself runs under the race detector (`make race`).
const raceEnv = "E2E_RACE"

// wardenPkg is the main package BuildWarden compiles.
const wardenPkg = "github.com/warden-iot/warden/cmd/warden"

// Main builds the warden binary (unless BinaryEnv already names one), runs
// the tests and removes the binary again. Call it from TestMain; it does
// not return.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if p := os.Getenv(BinaryEnv); p != "" {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			fmt.Fprintf(os.Stderr, "%s=%s is not a warden binary (%v); unset it to build one\n", BinaryEnv, p, err)
			return 1
		}
		return m.Run()
	}
	path, cleanup, err := BuildWarden()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	if err := os.Setenv(BinaryEnv, path); err != nil {
		fmt.Fprintf(os.Stderr, "set %s: %v\n", BinaryEnv, err)
		return 1
	}
	return m.Run()
}

// BuildWarden compiles cmd/warden into a fresh temporary directory, with
// -race when E2E_RACE is set, and returns its path and a function that
// removes it. The compiler's output goes to stderr so a build failure
// explains itself. Main calls it; call it directly only from a TestMain
// that needs more than Main does, and export the path in BinaryEnv.
func BuildWarden() (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "warden-e2e-bin-")
	if err != nil {
		return "", nil, fmt.Errorf("build warden: create a directory for the binary: %w", err)
	}
	path = filepath.Join(dir, "warden")
	args := []string{"build", "-o", path}
	if os.Getenv(raceEnv) != "" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, wardenPkg)...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build warden (the compiler's output is above): %w", err)
	}
	return path, func() { os.RemoveAll(dir) }, nil
}

// Binary returns the path of the warden binary, failing the test when no
// TestMain built one.
func Binary(t testing.TB) string {
	t.Helper()
	p, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func binary() (string, error) {
	p := os.Getenv(BinaryEnv)
	if p == "" {
		return "", fmt.Errorf("wardentest: no warden binary: call wardentest.Main(m) from TestMain, or set %s", BinaryEnv)
	}
	return p, nil
}

// Env returns the environment for a warden process: the test's own minus
// every WARDEN_* variable, so a developer's shell cannot change what a test
// sees, and minus BinaryEnv, which is the harness's business only.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "WARDEN_") || strings.HasPrefix(kv, BinaryEnv+"=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// RunWarden runs one CLI command against the data directory data (it
// appends --data) and returns its stdout and stderr. A non-zero exit is
// the error.
func RunWarden(data string, args ...string) (stdout, stderr string, err error) {
	bin, err := binary()
	if err != nil {
		return "", "", err
	}
	cmd := exec.Command(bin, append(args, "--data", data)...)
	cmd.Env = Env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// RequireTool returns the path of an outside tool (mosquitto_pub,
// openssl). A missing tool fails the test in CI, where `make deps`
// installs it (CI set to anything), and skips it elsewhere with a message
// saying which Debian package pkg to install.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found; CI must install it (apt-get install %s, see `make deps`)", name, pkg)
	}
	t.Skipf("%s not found; install it with `apt-get install %s` (or run `make deps`)", name, pkg)
	return ""
}

// SyncBuffer collects a process's output: exec writes from its own
// goroutines while the test reads, so the buffer needs a lock.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
