package bench

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process defaults.
const (
	// DefaultStartTimeout bounds waiting for a process to be ready.
	DefaultStartTimeout = 60 * time.Second
	// DefaultStopTimeout is how long Stop waits after SIGTERM before
	// SIGKILL. Warden folds its replay journal and closes its stores on
	// SIGTERM; with 15,000 sessions that takes a few seconds.
	DefaultStopTimeout = 20 * time.Second
	// serverName is the name every server certificate here is checked
	// against: Warden's server certificate always covers it.
	serverName = "localhost"
)

// Proc is a server the benchmark started as a child process: Warden,
// Mosquitto or the bare TLS server. It lives until Stop, or until the
// context given to its Start function ends (then it gets SIGTERM and, after
// its stop timeout, SIGKILL). Its output goes to LogPath.
//
// If the benchmark process dies, the kernel kills the child (Linux parent
// death signal), so an interrupted run leaves no broker behind.
type Proc struct {
	// Name is "warden", "mosquitto" or "tls-baseline".
	Name string
	// PID is the server's process ID, for ProcStats and Sampler.
	PID int
	// LogPath is the file holding the process's standard output and error.
	LogPath string
	// Dir is Warden's data directory, or the directory holding the other
	// servers' configuration and certificates.
	Dir string
	// ConfigPath is the configuration file the benchmark wrote ("" for the
	// bare TLS server, which takes flags).
	ConfigPath string
	// Version is the server's version as it reports it ("2.0.11" for
	// Mosquitto, `warden --version` for Warden), for the report.
	Version string

	// Addr is the mutual-TLS listener devices connect to (host:port):
	// Warden's mqtts, Mosquitto's TLS listener, the bare TLS server.
	Addr string
	// PlainAddr is Warden's plain MQTT listener for envelope devices, when
	// started with WardenOptions.PlainMQTT.
	PlainAddr string
	// HTTPAddr is Warden's http listener (/healthz, /metrics).
	HTTPAddr string
	// APIAddr is Warden's HTTPS API listener, when WardenOptions.API.
	APIAddr string

	// ServerName is the name clients check the server certificate against.
	ServerName string
	// ServerCA is the file holding the CA certificate clients must trust
	// for the server certificate, and ServerCAPEM its content: Warden's
	// root for Warden, a throwaway CA for the others (see WriteServerCert).
	ServerCA    string
	ServerCAPEM []byte
	// TLS is what the readiness probe negotiated, e.g. "TLS 1.3,
	// X25519MLKEM768" ("" when no TLS probe was made). It shows whether
	// two servers being compared used the same key exchange.
	TLS string

	cmd         *exec.Cmd
	done        chan struct{}
	waitErr     error // set before done is closed
	stopTimeout time.Duration
	stopOnce    sync.Once
	stopErr     error
}

// MetricsURL is Warden's Prometheus endpoint ("" for the other servers).
func (p *Proc) MetricsURL() string {
	if p.HTTPAddr == "" {
		return ""
	}
	return "http://" + p.HTTPAddr + "/metrics"
}

// ServerRoots returns a pool holding ServerCAPEM, for clients' RootCAs.
func (p *Proc) ServerRoots() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.ServerCAPEM) {
		return nil, fmt.Errorf("bench: %s: no PEM certificate in its server CA %s", p.Name, p.ServerCA)
	}
	return pool, nil
}

// Stats reads the process's /proc stats (see ProcStats).
func (p *Proc) Stats() (Stats, error) { return ProcStats(p.PID) }

// Exited is closed when the process has exited, for whatever reason.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Stop ends the process: SIGTERM, then SIGKILL if it has not exited after
// its stop timeout or when ctx ends first. It returns an error when the
// process had to be killed or exited with a failure status (including an
// exit before Stop); the log has the details. Stop may be called more than
// once; later calls return the first result.
func (p *Proc) Stop(ctx context.Context) error {
	p.stopOnce.Do(func() { p.stopErr = p.stop(ctx) })
	return p.stopErr
}

func (p *Proc) stop(ctx context.Context) error {
	select {
	case <-p.done:
		// It exited on its own (or ctx of Start ended): report how.
		if p.waitErr != nil {
			return fmt.Errorf("bench: %s (PID %d) exited before Stop: %w; see %s", p.Name, p.PID, p.waitErr, p.LogPath)
		}
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("bench: stop %s (PID %d): %w", p.Name, p.PID, err)
	}
	t := time.NewTimer(p.stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		if p.waitErr != nil && !terminatedBy(p.waitErr, syscall.SIGTERM) {
			return fmt.Errorf("bench: %s (PID %d) failed while stopping: %w; see %s", p.Name, p.PID, p.waitErr, p.LogPath)
		}
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("bench: %s (PID %d) did not stop within %v of SIGTERM and was killed; see %s", p.Name, p.PID, p.stopTimeout, p.LogPath)
}

// terminatedBy reports whether a Wait error is death by signal sig.
func terminatedBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// procSpec is what startProc runs.
type procSpec struct {
	name        string
	path        string
	args        []string
	dir         string // working directory
	env         []string
	logPath     string
	stopTimeout time.Duration
}

// startProc starts a child process with its output in a log file. The
// process gets SIGTERM when ctx ends and SIGKILL stopTimeout later.
func startProc(ctx context.Context, s procSpec) (*Proc, error) {
	// O_APPEND: Mosquitto also opens the file (log_dest file) and appends;
	// writes at a shared offset would overwrite each other.
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bench: create the log of %s: %w", s.name, err)
	}
	if s.stopTimeout <= 0 {
		s.stopTimeout = DefaultStopTimeout
	}
	cmd := exec.CommandContext(ctx, s.path, s.args...)
	cmd.Dir = s.dir
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = s.stopTimeout
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("bench: start %s (%s): %w", s.name, s.path, err)
	}
	p := &Proc{
		Name: s.name, PID: cmd.Process.Pid, LogPath: s.logPath, Dir: s.dir, ServerName: serverName,
		cmd: cmd, done: make(chan struct{}), stopTimeout: s.stopTimeout,
	}
	go func() {
		err := cmd.Wait()
		// Ending ctx is a request to stop: a clean exit after it is not a
		// failure (Wait reports ctx's error then).
		if ctx.Err() != nil && (errors.Is(err, ctx.Err()) || terminatedBy(err, syscall.SIGTERM)) {
			err = nil
		}
		p.waitErr = err
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// failStart stops a process that did not become ready and returns err
// with the end of its log.
func (p *Proc) failStart(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.stopTimeout)
	defer cancel()
	_ = p.Stop(ctx)
	return fmt.Errorf("%w\nlast lines of %s:\n%s", err, p.LogPath, logTail(p.LogPath, 20))
}

// logTail returns the last n lines of a log file, for error messages.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	const maxTail = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > maxTail {
		_, _ = f.Seek(-maxTail, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxTail))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// logContains reports whether the process's log holds s.
func logContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

// freeAddr returns a loopback address with a port that was free a moment
// ago. Another process may take it before the server binds it; the Start
// functions retry with new ports when a server reports the address in use.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("bench: find a free loopback port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("bench: find a free loopback port: %w", err)
	}
	return addr, nil
}

// childEnv is the benchmark's environment without WARDEN_* variables (a
// stray WARDEN_LIMITS__... would silently benchmark another
// configuration) plus extra.
func childEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WARDEN_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// selfBinary resolves an empty binary path to the running executable.
func selfBinary(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("bench: find the warden binary (give its path): %w", err)
	}
	return p, nil
}

// waitReady polls ready every 50ms until it returns nil, the process
// exits, timeout passes or ctx ends.
func (p *Proc) waitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	if timeout <= 0 {
		timeout = DefaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		last = ready(pctx)
		pcancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("bench: %s exited during start (%v)", p.Name, p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("bench: %s was not ready within %v: %v", p.Name, timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
