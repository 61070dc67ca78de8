package wardentest

import (
	"bufio"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// startTimeout bounds how long `warden serve` may take to print its banner.
const startTimeout = 30 * time.Second

// stopTimeout bounds a graceful stop before the harness kills the server.
const stopTimeout = 15 * time.Second

// The banner `warden serve` prints once every listener is up; the harness
// reads the bound addresses from it because every port is :0.
var (
	reMQTTS = regexp.MustCompile(`(?m)^\s+mqtts\s+(\S+)`)
	reWSS   = regexp.MustCompile(`(?m)^\s+wss\s+(\S+?)(/\S*)?$`)
	reHTTP  = regexp.MustCompile(`(?m)^\s+http\s+http://(\S+)`)
	rePlain = regexp.MustCompile(`(?m)^\s+mqtt\s+(\S+)`)
	reAPI   = regexp.MustCompile(`(?m)^\s+api\s+https://(\S+)`)
)

// Server is a running `warden serve` process. The address fields hold the
// listeners of the current process: Restart rewrites them, since every
// start binds new ports. Treat them as read-only.
type Server struct {
	// Data is the data directory the server and every CLI command use.
	Data string
	// MQTTS is the MQTT over TLS listener, host:port.
	MQTTS string
	// WSS is the MQTT over WebSocket (TLS) listener, host:port.
	WSS string
	// Plain is the plain MQTT listener for envelope devices, host:port;
	// empty unless the server was started with --mqtt.
	Plain string
	// HTTP is the plain HTTP listener (/metrics, /healthz), host:port.
	HTTP string
	// API is the HTTPS listener (OTA, enrollment, REST API), host:port.
	API string

	t    testing.TB
	args []string
	cmd  *exec.Cmd
	out  *SyncBuffer
	log  *SyncBuffer
	done chan struct{}
}

// Start runs `warden serve` on the data directory data with every listener
// on a free loopback port, a 2s connect timeout and debug logging; extra
// flags are appended (a later flag wins). It returns once the banner is
// printed and stops the server when the test ends. A server that exits
// early or does not come up in 30s fails the test with its output.
func Start(t testing.TB, data string, extra ...string) *Server {
	t.Helper()
	args := append([]string{"serve", "--data", data,
		"--mqtts", "127.0.0.1:0", "--wss", "127.0.0.1:0", "--http", "127.0.0.1:0", "--api", "127.0.0.1:0",
		"--connect-timeout", "2s", "--log-level", "debug"}, extra...)
	s := &Server{t: t, Data: data, args: args}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	t := s.t
	t.Helper()
	s.out, s.log = &SyncBuffer{}, &SyncBuffer{}
	s.cmd = exec.Command(Binary(t), s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.log
	s.cmd.Env = Env()
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start warden serve: %v", err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.After(startTimeout)
	for {
		if m := reMQTTS.FindStringSubmatch(s.out.String()); m != nil && strings.Contains(s.out.String(), "Try it") {
			s.MQTTS = m[1]
			if w := reWSS.FindStringSubmatch(s.out.String()); w != nil {
				s.WSS = w[1]
			}
			if h := reHTTP.FindStringSubmatch(s.out.String()); h != nil {
				s.HTTP = h[1]
			}
			if p := rePlain.FindStringSubmatch(s.out.String()); p != nil {
				s.Plain = p[1]
			}
			if a := reAPI.FindStringSubmatch(s.out.String()); a != nil {
				s.API = a[1]
			}
			return
		}
		select {
		case <-s.done:
			t.Fatalf("warden serve exited early:\nstdout:\n%s\nstderr:\n%s", s.out, s.log)
		case <-deadline:
			t.Fatalf("warden serve did not come up in %v:\nstdout:\n%s\nstderr:\n%s", startTimeout, s.out, s.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends the server with SIGTERM, the graceful path, and waits; after
// 15s it kills it. It reports a data race the race detector printed (see
// E2E_RACE) as a test error, and on a failed test logs the last 60 lines
// of the server's stderr. Stopping a stopped server only repeats those
// checks.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(stopTimeout):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	if strings.Contains(s.log.String(), "WARNING: DATA RACE") {
		s.t.Errorf("the race detector reported a data race in warden serve:\n%s", s.log.String())
	}
	if s.t.Failed() {
		s.t.Logf("warden serve stderr:\n%s", tail(s.log.String(), 60))
	}
}

// Kill ends the server with SIGKILL and waits for it to exit: nothing is
// flushed or closed, as after a power cut or the OOM killer, which is what
// crash-safety tests need. Restart brings it back on the same data
// directory.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// Restart stops the server (see Stop; a killed server stays stopped) and
// starts it again with the same flags on the same data directory. The
// ports change: read the address fields again afterwards.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Process returns the operating-system process of the current run, for a
// test that signals it or reads /proc/<pid>. It changes on Restart.
func (s *Server) Process() *os.Process {
	return s.cmd.Process
}

// Done is closed when the current process exits, for whatever reason: a
// test can tell a crash from a server that is still serving. It changes on
// Restart.
func (s *Server) Done() <-chan struct{} {
	return s.done
}

// Out returns what the current process printed on stdout (the banner).
func (s *Server) Out() string {
	return s.out.String()
}

// Log returns what the current process printed on stderr (its log).
func (s *Server) Log() string {
	return s.log.String()
}

// Warden runs a CLI command against the server's data directory; see
// RunWarden.
func (s *Server) Warden(args ...string) (stdout, stderr string, err error) {
	return RunWarden(s.Data, args...)
}

// MustWarden runs a CLI command against the server's data directory and
// returns its stdout, failing the test with both outputs if it fails.
func (s *Server) MustWarden(args ...string) string {
	s.t.Helper()
	out, errOut, err := s.Warden(args...)
	if err != nil {
		s.t.Fatalf("warden %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// Creds are the PEM files `warden device add` / `warden service add`
// write: the principal's certificate and key and the root CA.
type Creds struct {
	// ID is the device ID or service name; ConnectRaw uses it as the
	// client ID unless told otherwise.
	ID   string
	Cert string
	Key  string
	CA   string
}

// AddDevice registers a device with `warden device add` and returns its
// credentials, written to a directory the test removes.
func (s *Server) AddDevice(id string) Creds {
	s.t.Helper()
	dir := s.t.TempDir()
	s.MustWarden("device", "add", id, "--out", dir)
	return Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
}

// AddService registers a service with `warden service add` in the given
// role (reader, commander, ...) and returns its credentials.
func (s *Server) AddService(name, role string) Creds {
	s.t.Helper()
	dir := s.t.TempDir()
	s.MustWarden("service", "add", name, "--role", role, "--out", dir)
	return Creds{ID: name, Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(dir, "ca.crt")}
}

// AddExpiredDevice registers a device whose certificate expired an hour
// ago. The CLI cannot issue one, so it opens the CA and the registry beside
// the running server (SQLite in WAL mode allows it) the way an operator
// tool would, with a clock two hours behind.
func (s *Server) AddExpiredDevice(id string) Creds {
	t := s.t
	t.Helper()
	cfg := config.Default()
	cfg.Data = s.Data
	p := cfg.Paths()
	// A CA and registry whose clock runs two hours behind issue a one-hour
	// certificate that expired an hour ago.
	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	mk, err := keystore.LoadMasterKey(p.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Load(p.PKI, ks, past)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), p.RegistryDB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := registry.New(st, ca, registry.Options{Now: past, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := pki.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueDevice(csr, id, time.Hour)
	if err != nil {
		t.Fatalf("issue a certificate: %v", err)
	}
	if time.Now().Before(cert.NotAfter) {
		t.Fatalf("certificate not expired: NotAfter %v", cert.NotAfter)
	}
	if _, err := reg.RegisterDevice(context.Background(), registry.DeviceSpec{ID: id}, csrDER, cert); err != nil {
		t.Fatalf("register the expired device: %v", err)
	}
	dir := t.TempDir()
	keyPEM, err := pki.EncodePrivateKey(key, "pem")
	if err != nil {
		t.Fatal(err)
	}
	c := Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{c.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644},
		{c.Key, keyPEM, 0o600},
		{c.CA, ca.RootPEM(), 0o644},
	} {
		if err := os.WriteFile(f.path, f.data, f.perm); err != nil {
			t.Fatalf("write the expired device's credentials: %v", err)
		}
	}
	return c
}

// Metric fetches /metrics and returns the sum of the series named name
// whose line contains every label fragment (`listener="mqtts"`); zero when
// none matches.
func (s *Server) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return sumMetric(HTTPGet(t, "http://"+s.HTTP+"/metrics"), name, labels...)
}

// sumMetric adds up the samples of the Prometheus text exposition body
// named exactly name (not a longer name it prefixes) whose lines contain
// every label fragment.
func sumMetric(body, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		var v float64
		fields := strings.Fields(line)
		_, _ = fmt.Sscan(fields[len(fields)-1], &v)
		sum += v
	}
	return sum
}

// AuditContains reports whether one line of the audit log contains every
// fragment; false when the log does not exist yet.
func (s *Server) AuditContains(fragments ...string) bool {
	b, err := os.ReadFile(filepath.Join(s.Data, "audit.log"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, f := range fragments {
			if !strings.Contains(line, f) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			return true
		}
	}
	return false
}
