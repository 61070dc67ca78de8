package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/spf13/pflag"
)

// The test binary doubles as the bare TLS server: StartBaseline runs
// `<binary> bench tls-server ...`, which the warden binary will route to
// ServeBaseline, and which TestMain routes there for the test binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "bench" && os.Args[2] == "tls-server" {
		os.Exit(runTLSServer(os.Args[3:]))
	}
	dir, err := os.MkdirTemp("", "warden-bench-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins = &binaries{dir: dir}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runTLSServer is what `warden bench tls-server` does.
func runTLSServer(args []string) int {
	var o BaselineServerOptions
	fs := pflag.NewFlagSet("tls-server", pflag.ContinueOnError)
	AddBaselineFlags(fs, &o)
	if err := fs.Parse(args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := ServeBaseline(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// binaries builds the warden binary once, for the tests that need it.
type binaries struct {
	dir    string
	once   sync.Once
	warden string
	err    error
}

// bins is set by TestMain; tests only read it.
var bins *binaries

// wardenBinary builds ./cmd/warden (once per test process) and returns
// its path.
func wardenBinary(t testing.TB) string {
	t.Helper()
	bins.once.Do(func() {
		bins.warden = filepath.Join(bins.dir, "warden")
		out, err := exec.Command("go", "build", "-o", bins.warden, "github.com/warden-iot/warden/cmd/warden").CombinedOutput()
		if err != nil {
			bins.err = fmt.Errorf("build warden: %v\n%s", err, out)
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.warden
}

// requireMosquitto fails in CI, where mosquitto is installed, and skips
// elsewhere when it is missing.
func requireMosquitto(t testing.TB) {
	t.Helper()
	_, err := FindMosquitto("")
	if err == nil {
		return
	}
	if !errors.Is(err, ErrMosquittoNotFound) {
		t.Fatal(err)
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%v; CI must install it (see `make deps`)", err)
	}
	t.Skipf("%v", err)
}

// provision provisions a small fleet in a fresh data directory.
func provision(t testing.TB, n int, envelope string) *FleetDir {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := t.TempDir()
	f, err := ProvisionFleet(ctx, FleetOptions{
		Binary: wardenBinary(t), DataDir: filepath.Join(base, "data"), Dir: filepath.Join(base, "fleet"),
		Devices: n, Envelope: envelope,
	})
	if err != nil {
		t.Fatalf("provision %d devices: %v", n, err)
	}
	return f
}

// stopProc stops a process at the end of a test and fails the test when
// it did not stop cleanly.
func stopProc(t testing.TB, p *Proc) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v\n%s", p.Name, err, logTail(p.LogPath, 30))
		}
	})
}

// mqttClient is one paho MQTT 5 connection over mutual TLS.
type mqttClient struct {
	*paho.Client
	msgs chan *paho.Publish
}

// connectMQTT connects with a certificate and client ID to addr.
func connectMQTT(t testing.TB, addr string, cert tls.Certificate, roots *x509.CertPool, clientID string) *mqttClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: &tls.Config{
		RootCAs: roots, ServerName: serverName, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
	}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", clientID, addr, err)
	}
	c := &mqttClient{msgs: make(chan *paho.Publish, 100)}
	c.Client = paho.NewClient(paho.ClientConfig{
		// One packet is several writes; the lock keeps the pinger out of
		// the middle of one on a TLS connection.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case c.msgs <- pr.Packet:
			default:
			}
			return true, nil
		}},
	})
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		code := -1
		if ca != nil {
			code = int(ca.ReasonCode)
		}
		conn.Close()
		t.Fatalf("%s: connect: %v (reason code %d)", clientID, err, code)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}); conn.Close() })
	return c
}

func (c *mqttClient) subscribe(t testing.TB, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil {
		t.Fatalf("subscribe %q: %v", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] > 2 {
		t.Fatalf("subscribe %q: refused: %+v", filter, sa.Reasons)
	}
}

func (c *mqttClient) publish(t testing.TB, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: 1}); err != nil {
		t.Logf("publish %s: %v", topic, err) // a refusal is the broker's business; callers check delivery
	}
}

// await waits for a message on topic and fails if another arrives first
// on one of the forbidden topics.
func (c *mqttClient) await(t testing.TB, topic string, forbidden ...string) *paho.Publish {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-c.msgs:
			for _, f := range forbidden {
				if m.Topic == f {
					t.Fatalf("received %s (%q), which must not be delivered", m.Topic, m.Payload)
				}
			}
			if m.Topic == topic {
				return m
			}
		case <-deadline:
			t.Fatalf("no message on %s within 10s", topic)
			return nil
		}
	}
}

// quiet fails if any message arrives within d.
func (c *mqttClient) quiet(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.msgs:
		t.Fatalf("received %s (%q), which must not be delivered", m.Topic, m.Payload)
	case <-time.After(d):
	}
}
