// Package e2e drives a real `warden serve` process on loopback ports with
// real clients: the Go SDK, paho, mosquitto_pub/mosquitto_sub and
// openssl s_client.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/device"
)

var wardenBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "warden-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wardenBin = filepath.Join(dir, "warden")
	args := []string{"build", "-o", wardenBin}
	if os.Getenv("E2E_RACE") != "" { // E2E_RACE=1 go test ./internal/e2e: the server runs under the race detector
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "github.com/warden-iot/warden/cmd/warden")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build warden:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool fails in CI (where `make deps` installs it) and skips
// elsewhere when an outside tool is missing.
func requireTool(t testing.TB, name, pkg string) string {
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

// syncBuffer collects a process's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// server is a `warden serve` process.
type server struct {
	t     testing.TB
	data  string
	args  []string
	cmd   *exec.Cmd
	out   *syncBuffer
	log   *syncBuffer
	mqtts string
	wss   string
	plain string // the plain listener, when started with --mqtt
	http  string
	api   string // the HTTPS listener (OTA)
	done  chan struct{}
}

var (
	reMQTTS = regexp.MustCompile(`(?m)^\s+mqtts\s+(\S+)`)
	reWSS   = regexp.MustCompile(`(?m)^\s+wss\s+(\S+?)(/\S*)?$`)
	reHTTP  = regexp.MustCompile(`(?m)^\s+http\s+http://(\S+)`)
	rePlain = regexp.MustCompile(`(?m)^\s+mqtt\s+(\S+)`)
	reAPI   = regexp.MustCompile(`(?m)^\s+api\s+https://(\S+)`)
)

// startServer runs `warden serve` on a data directory with every listener
// on a free loopback port and short limits suited to tests.
func startServer(t testing.TB, data string, extra ...string) *server {
	t.Helper()
	args := append([]string{"serve", "--data", data,
		"--mqtts", "127.0.0.1:0", "--wss", "127.0.0.1:0", "--http", "127.0.0.1:0", "--api", "127.0.0.1:0",
		"--connect-timeout", "2s", "--log-level", "debug"}, extra...)
	s := &server{t: t, data: data, args: args}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	t := s.t
	t.Helper()
	s.out, s.log = &syncBuffer{}, &syncBuffer{}
	s.cmd = exec.Command(wardenBin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.log
	s.cmd.Env = cleanEnv()
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start warden serve: %v", err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.After(30 * time.Second)
	for {
		if m := reMQTTS.FindStringSubmatch(s.out.String()); m != nil && strings.Contains(s.out.String(), "Try it") {
			s.mqtts = m[1]
			if w := reWSS.FindStringSubmatch(s.out.String()); w != nil {
				s.wss = w[1]
			}
			if h := reHTTP.FindStringSubmatch(s.out.String()); h != nil {
				s.http = h[1]
			}
			if p := rePlain.FindStringSubmatch(s.out.String()); p != nil {
				s.plain = p[1]
			}
			if a := reAPI.FindStringSubmatch(s.out.String()); a != nil {
				s.api = a[1]
			}
			return
		}
		select {
		case <-s.done:
			t.Fatalf("warden serve exited early:\nstdout:\n%s\nstderr:\n%s", s.out, s.log)
		case <-deadline:
			t.Fatalf("warden serve did not come up in 30s:\nstdout:\n%s\nstderr:\n%s", s.out, s.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the server with SIGTERM (graceful) and waits.
func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
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

// restart stops and starts the server on the same data directory (ports
// change).
func (s *server) restart() {
	s.stop()
	s.start()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "WARDEN_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// warden runs a CLI command against the server's data directory.
func (s *server) warden(args ...string) (string, string, error) {
	return runWarden(s.data, args...)
}

func runWarden(data string, args ...string) (string, string, error) {
	cmd := exec.Command(wardenBin, append(args, "--data", data)...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (s *server) mustWarden(args ...string) string {
	s.t.Helper()
	out, errOut, err := s.warden(args...)
	if err != nil {
		s.t.Fatalf("warden %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// creds are the files `warden device add` / `service add` write.
type creds struct {
	id, cert, key, ca string
}

func (s *server) addDevice(id string) creds {
	s.t.Helper()
	dir := filepath.Join(s.t.TempDir())
	s.mustWarden("device", "add", id, "--out", dir)
	return creds{id: id, cert: filepath.Join(dir, id+".crt"), key: filepath.Join(dir, id+".key"), ca: filepath.Join(dir, "ca.crt")}
}

func (s *server) addService(name, role string) creds {
	s.t.Helper()
	dir := filepath.Join(s.t.TempDir())
	s.mustWarden("service", "add", name, "--role", role, "--out", dir)
	return creds{id: name, cert: filepath.Join(dir, name+".crt"), key: filepath.Join(dir, name+".key"), ca: filepath.Join(dir, "ca.crt")}
}

func (c creds) tls(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, pool, err := device.LoadCredentials(c.cert, c.key, c.ca)
	if err != nil {
		t.Fatalf("load credentials of %s: %v", c.id, err)
	}
	return cert, pool
}

// connectSDK connects a device with the Go SDK.
func connectSDK(t testing.TB, s *server, c creds, opts ...func(*device.Config)) *device.Client {
	t.Helper()
	cert, pool := c.tls(t)
	cfg := device.Config{
		Servers:     []string{"mqtts://" + s.mqtts},
		Certificate: cert,
		RootCAs:     pool,
		ServerName:  "localhost",
		MinBackoff:  50 * time.Millisecond,
		MaxBackoff:  500 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("device %s: connect: %v", c.id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = cl.Close(ctx)
	})
	return cl
}

// rawClient is a single paho connection without reconnects, for checking
// exactly what the broker answers.
type rawClient struct {
	*paho.Client
	msgs chan *paho.Publish
	down chan struct{}
}

type rawOpts struct {
	clientID      string
	emptyClientID bool
	clean         bool
	sessionExpiry uint32
	will          *paho.WillMessage
}

func dialTLS(t testing.TB, addr string, cert *tls.Certificate, roots *x509.CertPool, cfgs ...func(*tls.Config)) (*tls.Conn, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	for _, f := range cfgs {
		f(cfg)
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// connectRaw opens one MQTT 5 connection and returns the client and the
// CONNACK (or the error).
func connectRaw(t testing.TB, addr string, c creds, o rawOpts) (*rawClient, *paho.Connack, error) {
	t.Helper()
	cert, pool := c.tls(t)
	conn, err := dialTLS(t, addr, &cert, pool)
	if err != nil {
		return nil, nil, err
	}
	rc := &rawClient{msgs: make(chan *paho.Publish, 100), down: make(chan struct{})}
	var once sync.Once
	closeDown := func() { once.Do(func() { close(rc.down) }) }
	rc.Client = paho.NewClient(paho.ClientConfig{
		// paho writes one packet in several Writes; without the lock its
		// pinger can interleave a PINGREQ into another packet on a TLS conn.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case rc.msgs <- pr.Packet:
			default:
			}
			return true, nil
		}},
		OnServerDisconnect: func(*paho.Disconnect) { closeDown() },
		OnClientError:      func(error) { closeDown() },
	})
	id := o.clientID
	if id == "" && !o.emptyClientID {
		id = c.id
	}
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: o.clean, WillMessage: o.will}
	if o.sessionExpiry > 0 {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &o.sessionExpiry}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := rc.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		return nil, ca, err
	}
	t.Cleanup(func() { _ = rc.Disconnect(&paho.Disconnect{}); _ = conn.Close() })
	return rc, ca, nil
}

func mustConnectRaw(t testing.TB, addr string, c creds, o rawOpts) *rawClient {
	t.Helper()
	rc, ca, err := connectRaw(t, addr, c, o)
	if err != nil {
		code := -1
		if ca != nil {
			code = int(ca.ReasonCode)
		}
		t.Fatalf("%s: connect: %v (reason code %d)", c.id, err, code)
	}
	return rc
}

func (rc *rawClient) subscribe(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := rc.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if sa != nil && len(sa.Reasons) == 1 {
		return sa.Reasons[0]
	}
	if err != nil {
		t.Fatalf("subscribe %q: %v", filter, err)
	}
	t.Fatalf("subscribe %q: malformed SUBACK %+v", filter, sa)
	return 0
}

func (rc *rawClient) publish(t testing.TB, topic string, payload []byte, qos byte) (byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := rc.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if pr != nil {
		return pr.ReasonCode, err
	}
	return 0, err
}

// expectMessage waits for one message on topic.
func expectMessage(t testing.TB, ch <-chan *paho.Publish, topic, payload string, within time.Duration) *paho.Publish {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-ch:
			if m.Topic == topic && string(m.Payload) == payload {
				return m
			}
			t.Logf("ignoring message on %s: %q", m.Topic, m.Payload)
		case <-deadline:
			t.Fatalf("no message %q on %s within %v", payload, topic, within)
			return nil
		}
	}
}

// expectNoMessage fails if anything arrives within d.
func expectNoMessage(t testing.TB, ch <-chan *paho.Publish, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message on %s: %q", m.Topic, m.Payload)
	case <-time.After(d):
	}
}

// metric fetches /metrics and returns the sum of the series matching name
// and all given label fragments.
func (s *server) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	body := httpGet(t, "http://"+s.http+"/metrics")
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
		fmt.Sscan(fields[len(fields)-1], &v)
		sum += v
	}
	return sum
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// auditContains reports whether the audit log has a line with all fragments.
func (s *server) auditContains(fragments ...string) bool {
	b, err := os.ReadFile(filepath.Join(s.data, "audit.log"))
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

func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", within, what)
}
