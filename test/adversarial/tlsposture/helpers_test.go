package tlsposture

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/wardentest"
)

// fullEnv runs the slow scans: testssl.sh on every listener with every
// check.
const fullEnv = "ADVERSARIAL_FULL"

func full() bool { return os.Getenv(fullEnv) != "" }

// listener is one TLS listener of a running server.
type listener struct {
	name string // as in Warden's metrics and audit lines
	addr string
}

// tlsListeners are the server's TLS listeners: mqtts and wss require a
// client certificate in the handshake, api only asks for one.
func tlsListeners(s *wardentest.Server) []listener {
	return []listener{{"mqtts", s.MQTTS}, {"wss", s.WSS}, {"api", s.API}}
}

// compatFlags put every TLS listener on the compat profile.
var compatFlags = []string{"--mqtts-tls-profile", "compat", "--wss-tls-profile", "compat", "--api-tls-profile", "compat"}

// runSSLScan scans addr with sslscan, presenting c's certificate (without
// it, sslscan cannot enumerate TLS 1.2 suites behind mutual TLS: OpenSSL
// gives up on the handshake before it reports the suite).
func runSSLScan(t *testing.T, addr string, c wardentest.Creds) (SSLScan, string) {
	t.Helper()
	bin := wardentest.RequireTool(t, "sslscan", "sslscan")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--xml=-", "--no-colour", "--certs="+c.Cert, "--pk="+c.Key, addr)
	var stderr wardentest.SyncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	r, perr := ParseSSLScanXML(out)
	if perr != nil {
		t.Fatalf("sslscan %s: %v (exit: %v)\nstdout:\n%s\nstderr:\n%s", addr, perr, err, out, stderr.String())
	}
	return r, string(out)
}

// testsslBinary finds testssl.sh: Debian installs it as testssl.
func testsslBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("testssl.sh"); err == nil {
		return p
	}
	return wardentest.RequireTool(t, "testssl", "testssl.sh")
}

// runTestSSL runs testssl.sh with checks against addr and returns its
// findings. testssl.sh 3.0 cannot present a client certificate; its
// checks run on raw sockets up to the ServerHello, so they enumerate
// behind mutual TLS all the same.
func runTestSSL(ctx context.Context, bin, dir, addr string, checks []string) (TestSSLFindings, string, error) {
	out := filepath.Join(dir, strings.NewReplacer(":", "-", ".", "-").Replace(addr)+".json")
	args := append([]string{"--quiet", "--color", "0", "--warnings", "off", "--fast", "--jsonfile", out}, checks...)
	cmd := exec.CommandContext(ctx, bin, append(args, addr)...)
	cmd.Dir = dir
	// testssl.sh is a shell script: killing it on the deadline leaves its
	// openssl children holding the output pipe for a while.
	cmd.WaitDelay = 5 * time.Second
	text, err := cmd.CombinedOutput()
	b, rerr := os.ReadFile(out)
	if rerr != nil {
		return nil, string(text), fmt.Errorf("testssl.sh %s wrote no JSON (exit: %v): %w", addr, err, rerr)
	}
	fs, perr := ParseTestSSLJSON(b)
	if perr != nil {
		return nil, string(text), fmt.Errorf("testssl.sh %s: %w (exit: %v)", addr, perr, err)
	}
	return fs, string(text), nil
}

// refusedTLS asserts one refused handshake and its trace on Warden: the
// failure counted under reason on the listener, and the tls.handshake
// audit line of this very connection (its source port is the remote).
func refusedTLS(t *testing.T, s *wardentest.Server, l listener, reason string, cfg *tls.Config) wardentest.TLSAttempt {
	t.Helper()
	a := wardentest.TryTLS(t, l.addr, cfg)
	if a.Err == nil {
		t.Fatalf("%s: handshake accepted (TLS %x), want it refused (%s)", l.name, a.Version, reason)
	}
	t.Logf("%s refused (%s): %v", l.name, reason, a.Err)
	wardentest.Eventually(t, 5*time.Second, fmt.Sprintf("the tls.handshake audit line for %s on %s", a.Local, l.name), func() bool {
		return s.AuditContains(`"action":"tls.handshake"`, `"outcome":"denied"`, `"reason":"`+reason+`"`,
			`"remote":"`+a.Local+`"`, `"listener":"`+l.name+`"`)
	})
	return a
}

// handshakeFailures reads warden_tls_handshake_failures_total for one
// listener and reason.
func handshakeFailures(t *testing.T, s *wardentest.Server, listener, reason string) float64 {
	t.Helper()
	return s.Metric(t, "warden_tls_handshake_failures_total", `listener="`+listener+`"`, `reason="`+reason+`"`)
}

// deviceConnects counts MQTT sessions Warden accepted from devices.
func deviceConnects(t *testing.T, s *wardentest.Server) float64 {
	t.Helper()
	return s.Metric(t, "warden_mqtt_connects_total", `kind="device"`)
}

// sdkConfig is the Go SDK's configuration for device c connecting to addr
// and expecting the broker's certificate to name serverName.
func sdkConfig(t *testing.T, c wardentest.Creds, addr, serverName string) device.Config {
	t.Helper()
	cert, pool := c.TLS(t)
	return device.Config{
		Servers:     []string{"mqtts://" + addr},
		Certificate: cert,
		RootCAs:     pool,
		ServerName:  serverName,
		MinBackoff:  50 * time.Millisecond,
		MaxBackoff:  500 * time.Millisecond,
	}
}

// sdkConnect connects with the SDK and returns the error; a client that
// connected is closed when the test ends.
func sdkConnect(t *testing.T, cfg device.Config) (*device.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cl, err := device.Connect(ctx, cfg)
	if err == nil {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = cl.Close(ctx)
		})
	}
	return cl, err
}

// requireUnknownAuthority asserts err is a refusal of a certificate that
// does not chain to the pinned root.
func requireUnknownAuthority(t *testing.T, what string, err error) {
	t.Helper()
	var ua x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &ua) {
		t.Fatalf("%s: err = %v, want an x509.UnknownAuthorityError", what, err)
	}
	t.Logf("%s refused: %v", what, err)
}

// requireHostnameMismatch asserts err is a refusal of a certificate that
// is not valid for the expected host name.
func requireHostnameMismatch(t *testing.T, what string, err error) {
	t.Helper()
	var he x509.HostnameError
	if err == nil || !errors.As(err, &he) {
		t.Fatalf("%s: err = %v, want an x509.HostnameError", what, err)
	}
	t.Logf("%s refused: %v", what, err)
}

// requireClientRefusedProxy asserts that every client of the proxy
// aborted the handshake, with the TLS alert alert unless it is empty
// (OpenSSL's abort reaches crypto/tls as "bad record MAC"): nothing was
// intercepted and no plaintext read.
func requireClientRefusedProxy(t *testing.T, m *wardentest.MITM, alert string) {
	t.Helper()
	wardentest.Eventually(t, 5*time.Second, "the proxy to see the client's refusal", func() bool {
		return len(m.Stats().ClientErrors) > 0
	})
	st := m.Stats()
	if st.Intercepted != 0 || st.Plaintext != 0 {
		t.Fatalf("the man in the middle intercepted %d connection(s) and read %d plaintext bytes", st.Intercepted, st.Plaintext)
	}
	for _, err := range st.ClientErrors {
		t.Logf("the proxy's handshake with the client failed: %v", err)
		if alert != "" && !strings.Contains(err.Error(), "remote error: tls: "+alert) {
			t.Fatalf("the proxy's handshake failed with %v, want the client's alert %q", err, alert)
		}
	}
}

// mosquittoPub publishes one QoS 1 message as device c through addr and
// returns mosquitto_pub's output and error.
func mosquittoPub(t *testing.T, addr string, c wardentest.Creds) (string, error) {
	t.Helper()
	bin := wardentest.RequireTool(t, "mosquitto_pub", "mosquitto-clients")
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "--cafile", c.CA, "--cert", c.Cert, "--key", c.Key,
		"-V", "mqttv5", "-i", c.ID, "-t", "private/"+c.ID+"/up/mitm", "-m", "through the proxy", "-q", "1").CombinedOutput()
	return string(out), err
}
