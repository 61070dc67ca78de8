package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/wardentest"
)

// slow reports whether the race detector slows the tests (this binary's
// or, with E2E_RACE, the server's) several times over: the tests then
// use smaller fleets and images of the same shape.
func slow() bool { return raceBuild || os.Getenv("E2E_RACE") != "" }

// scaled is normal, or small when slow.
func scaled(normal, small int) int {
	if slow() {
		return small
	}
	return normal
}

// node is a `warden serve` under fault injection. It keeps the output of
// every process it ran (Restart replaces the harness's buffers, so a
// killed server's log would be lost) and of every CLI command, and the
// secrets the test created, so that checkAtRest can look for them in the
// clear at the end.
type node struct {
	*wardentest.Server
	t *testing.T

	mu      sync.Mutex
	outputs strings.Builder
	kept    bool // the current process's output is in outputs

	secrets wardentest.Secrets
}

func startNode(t *testing.T, extra ...string) *node {
	t.Helper()
	n := &node{t: t}
	n.Server = wardentest.Start(t, t.TempDir(), extra...)
	return n
}

// keep appends the current process's output to outputs, once.
func (n *node) keep() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.kept {
		return
	}
	n.kept = true
	fmt.Fprintf(&n.outputs, "--- warden serve pid %d: stdout ---\n%s\n--- stderr ---\n%s\n", n.Process().Pid, n.Out(), n.Log())
}

func (n *node) record(what, stdout, stderr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fmt.Fprintf(&n.outputs, "--- %s: stdout ---\n%s\n--- stderr ---\n%s\n", what, stdout, stderr)
}

// kill ends the server with SIGKILL.
func (n *node) kill() {
	n.Kill()
	n.keep()
}

// stop ends the server gracefully.
func (n *node) stop() {
	n.Stop()
	n.keep()
}

// restart brings the server back on the same data directory.
func (n *node) restart() {
	n.t.Helper()
	n.Stop()
	n.keep()
	n.Restart()
	n.mu.Lock()
	n.kept = false
	n.mu.Unlock()
}

// cli runs a CLI command against the data directory and records its
// output. A command whose probe of the admin socket timed out (the CLI
// gives a busy server two seconds to answer GET /v1/whoami, which an
// overloaded CI machine running warden under the race detector can miss)
// did nothing, and is run again.
func (n *node) cli(args ...string) (string, string, error) {
	for attempt := 1; ; attempt++ {
		out, errOut, err := n.Warden(args...)
		n.record("warden "+strings.Join(args, " "), out, errOut)
		if err != nil && attempt < 3 && strings.Contains(errOut, "/v1/whoami") && strings.Contains(errOut, "deadline exceeded") {
			n.t.Logf("warden %s: the admin socket did not answer its probe in time; trying again", args[0])
			continue
		}
		return out, errOut, err
	}
}

// mustCLI is cli failing the test on an error.
func (n *node) mustCLI(args ...string) string {
	n.t.Helper()
	out, errOut, err := n.cli(args...)
	if err != nil {
		n.t.Fatalf("warden %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// token creates an API token. Its stdout (the token, printed once by
// design) is not recorded; the token is added to the secrets.
func (n *node) token(role string) string {
	n.t.Helper()
	out, errOut, err := n.Warden("token", "create", "--role", role, "--user", "fault-"+role)
	n.record("warden token create (stdout: the token, not kept)", "", errOut)
	if err != nil {
		n.t.Fatalf("token create: %v\n%s", err, errOut)
	}
	tok := strings.TrimSpace(out)
	n.secrets.AddAPIToken(n.t, tok)
	return tok
}

// checkAtRest runs after the faults: the audit chain still verifies, and
// no secret the test gathered (plus the master key and every sealed key,
// whose sealing it checks) is in the clear in the data directory, in any
// server process's output or in any CLI output.
func (n *node) checkAtRest() {
	t := n.t
	t.Helper()
	// What `warden audit verify` runs, in process (a CLI run costs a
	// second under the race detector).
	switch rep, err := audit.Verify(filepath.Join(n.Data, "audit.log")); {
	case err != nil:
		t.Errorf("the audit log cannot be verified after the faults: %v", err)
	case !rep.OK:
		t.Errorf("the audit log does not verify after the faults: %s %v", rep.Summary(), rep.Problems)
	default:
		t.Logf("audit verify: %s %v", rep.Summary(), rep.Notes)
	}
	sealed := n.secrets.AddSealedKeys(t, n.Data)
	n.mu.Lock()
	earlier := n.outputs.String()
	n.mu.Unlock()
	texts := map[string]string{"earlier server processes and CLI runs": earlier}
	if !n.kept {
		texts["warden serve stdout"] = n.Out()
		texts["warden serve stderr"] = n.Log()
	}
	rep := n.secrets.Scan(t, n.Data, texts)
	t.Logf("secret scan: %d secrets (%d sealed keys checked sealed at rest) in %d files and the logs, %d bytes; %d firmware blobs verified by hash",
		n.secrets.Len(), sealed, rep.Files, rep.Bytes, rep.Images)
	for i, l := range rep.Leaks {
		if i == 20 {
			t.Errorf("... and %d more secrets in the clear", len(rep.Leaks)-20)
			break
		}
		t.Errorf("SECRET IN THE CLEAR: %s", l)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// cliProcess is a CLI command running in the background, for a test that
// kills it.
type cliProcess struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line; closed at EOF
	stderr *wardentest.SyncBuffer
	done   chan error
}

func (n *node) startCLI(args ...string) *cliProcess {
	n.t.Helper()
	cmd := exec.Command(wardentest.Binary(n.t), append(args, "--data", n.Data)...)
	cmd.Env = wardentest.Env()
	p := &cliProcess{cmd: cmd, lines: make(chan string, 4096), stderr: &wardentest.SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	var all strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			p.lines <- sc.Text()
		}
		close(p.lines)
		err := cmd.Wait()
		n.record("warden "+strings.Join(args, " "), all.String(), p.stderr.String())
		p.done <- err
	}()
	n.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.lines // drained by wait below at worst
	})
	return p
}

// kill sends SIGKILL.
func (p *cliProcess) kill() { _ = p.cmd.Process.Signal(syscall.SIGKILL) }

// wait reads the rest of stdout and waits for the process; it returns the
// remaining lines and the exit error.
func (p *cliProcess) wait(t testing.TB) ([]string, error) {
	t.Helper()
	var rest []string
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				select {
				case err := <-p.done:
					return rest, err
				case <-timeout:
					t.Fatal("the CLI did not exit")
				}
			}
			rest = append(rest, l)
		case <-timeout:
			t.Fatal("the CLI did not finish its output")
		}
	}
}

// poll calls cond every 1 ms until it holds or within passes; it reports
// whether it held. It is the fast watcher a kill waits on, in a goroutine
// where t.Fatal is not allowed.
func poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return cond()
}

// auditCount counts the audit log lines holding every fragment.
func auditCount(data string, fragments ...string) int {
	b, err := os.ReadFile(filepath.Join(data, "audit.log"))
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		ok := line != ""
		for _, f := range fragments {
			ok = ok && strings.Contains(line, f)
		}
		if ok {
			n++
		}
	}
	return n
}

// socketClient is an HTTP client of the admin socket: the running server's
// API as an operator (mode 0600 socket) uses it, without a token.
func socketClient(data string) *http.Client {
	path := filepath.Join(data, "warden.sock")
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// apiClient is an HTTPS client of the api listener trusting the data
// directory's root, presenting cert if it is not nil.
func apiClient(t testing.TB, data string, cert *tls.Certificate) *http.Client {
	t.Helper()
	root, err := os.ReadFile(filepath.Join(data, "pki", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		t.Fatal("pki/root.crt holds no certificate")
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// creds names a device's files in a provisioning directory.
func creds(dir, id string) wardentest.Creds {
	return wardentest.Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
}

// connects reports whether an MQTT connection with c is accepted, and
// closes it.
func connects(t testing.TB, addr string, c wardentest.Creds) bool {
	t.Helper()
	rc, _, err := wardentest.ConnectRaw(t, addr, c, wardentest.RawOpts{Clean: true})
	if err != nil {
		return false
	}
	_ = rc.Disconnect(&paho.Disconnect{})
	return true
}

// release is a firmware release key as a release machine holds it: the
// server only ever sees its public half (`warden fw trust`). It signs in
// process with the firmware package, which is what `warden fw sign` runs
// (a CLI run per image costs seconds under the race detector).
type release struct {
	dir string
	key crypto.Signer
	seq uint64
}

func newRelease(t *testing.T, n *node) *release {
	t.Helper()
	key, err := firmware.GenerateKey(firmware.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	// The release key must never reach the server: scan for it too.
	n.secrets.AddECKey(t, "firmware release key", key.(*ecdsa.PrivateKey))
	pub, err := firmware.EncodePublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	r := &release{dir: t.TempDir(), key: key, seq: uint64(time.Now().UnixMicro())}
	pubPath := filepath.Join(r.dir, "release.pub")
	if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	n.mustCLI("fw", "trust", pubPath)
	return r
}

// sign signs a payload of size bytes as model/version, as `warden fw sign`
// does; it returns the image and statement paths and the image's SHA-256.
func (r *release) sign(t *testing.T, model, version string, counter, size int) (img, statement, sha string) {
	t.Helper()
	ver, err := firmware.ParseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte(version+"|"), size/len(version)+1)[:size]
	image, err := firmware.Sign(payload, r.key, firmware.SignOptions{Version: ver, SecurityCounter: uint32(counter), HeaderSize: 0x200})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(image)
	now := time.Now().UTC().Truncate(time.Second)
	r.seq++
	st, err := firmware.SignStatement(firmware.Statement{Model: model, Version: ver, SecurityCounter: uint32(counter), ImageSHA256: sum,
		ImageSize: int64(len(image)), Sequence: r.seq, IssuedAt: now, ExpiresAt: now.Add(90 * 24 * time.Hour)}, r.key)
	if err != nil {
		t.Fatal(err)
	}
	img = filepath.Join(r.dir, model+"-"+version+".img")
	if err := os.WriteFile(img, image, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img+".statement", st, 0o600); err != nil {
		t.Fatal(err)
	}
	return img, img + ".statement", hex.EncodeToString(sum[:])
}

// collector is a back-end service on a persistent MQTT session (clean
// start off, a one-hour session expiry) that counts every message it
// receives by payload. Its session survives its disconnection and, in the
// broker's session store, a server restart.
type collector struct {
	mu   sync.Mutex
	got  map[string]int
	down chan struct{}
	cl   *paho.Client
	conn net.Conn
}

func newCollectorState() *collector { return &collector{got: map[string]int{}} }

// connect opens the collector's session on addr with the service's
// credentials and, if filter is not empty, subscribes to it at QoS 1.
func (c *collector) connect(t testing.TB, addr string, svc wardentest.Creds, filter string) {
	t.Helper()
	cert, pool := svc.TLS(t)
	conn, err := wardentest.DialTLS(t, addr, &cert, pool)
	if err != nil {
		t.Fatalf("collector: %v", err)
	}
	down := make(chan struct{})
	var once sync.Once
	closeDown := func() { once.Do(func() { close(down) }) }
	cl := paho.NewClient(paho.ClientConfig{
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.mu.Lock()
			c.got[string(pr.Packet.Payload)]++
			c.mu.Unlock()
			return true, nil
		}},
		OnServerDisconnect: func(*paho.Disconnect) { closeDown() },
		OnClientError:      func(error) { closeDown() },
	})
	expiry := uint32(3600)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := cl.Connect(ctx, &paho.Connect{ClientID: svc.ID, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil {
		t.Fatalf("collector connect: %v (%+v)", err, ca)
	}
	if filter != "" {
		sa, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
		if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
			t.Fatalf("collector subscribe %s: %v %+v", filter, err, sa)
		}
	}
	c.mu.Lock()
	c.cl, c.conn, c.down = cl, conn, down
	c.mu.Unlock()
	t.Cleanup(c.close)
}

// close ends the connection, keeping the session on the server.
func (c *collector) close() {
	c.mu.Lock()
	cl, conn := c.cl, c.conn
	c.mu.Unlock()
	if cl != nil {
		_ = cl.Disconnect(&paho.Disconnect{})
		_ = conn.Close()
	}
}

// snapshot copies the counts.
func (c *collector) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.got))
	for k, v := range c.got {
		out[k] = v
	}
	return out
}

// writeJSON writes v as indented JSON to path.
func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// readAll reads and closes a response body.
func readAll(r io.ReadCloser) []byte {
	defer r.Close()
	b, _ := io.ReadAll(r)
	return b
}

// tcpQueued returns the bytes queued in the kernel between two loopback
// TCP endpoints (host:port): what a's socket has yet to send plus what b's
// socket received that its process has not read. With it a test knows how
// much of what it wrote the peer process has actually read. ok is false
// where /proc/net/tcp does not list both sockets.
func tcpQueued(a, b string) (n int, ok bool) {
	_, ap, err1 := net.SplitHostPort(a)
	_, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	raw, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, false
	}
	port := func(addr string) string {
		_, p, _ := strings.Cut(addr, ":")
		v, err := strconv.ParseUint(p, 16, 16)
		if err != nil {
			return ""
		}
		return strconv.FormatUint(v, 10)
	}
	queues := func(q string) (tx, rx int) {
		t, r, _ := strings.Cut(q, ":")
		tv, _ := strconv.ParseUint(t, 16, 32)
		rv, _ := strconv.ParseUint(r, 16, 32)
		return int(tv), int(rv)
	}
	found := 0
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		local, remote := port(f[1]), port(f[2])
		tx, rx := queues(f[4])
		switch {
		case local == ap && remote == bp:
			n += tx
			found++
		case local == bp && remote == ap:
			n += rx
			found++
		}
	}
	return n, found == 2
}
