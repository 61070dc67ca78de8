package bench

import (
	"crypto/tls"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMosquitto starts Mosquitto as the comparison does and checks the
// seed's policy with real device certificates: a device publishes in its
// own subtree, cannot reach another's, and the consumer reads them all.
func TestMosquitto(t *testing.T) {
	requireMosquitto(t)
	f := provision(t, 3, "")
	p, err := StartMosquitto(t.Context(), MosquittoOptions{Fleet: f, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	stopProc(t, p)
	if !strings.HasPrefix(p.TLS, "TLS 1.3") || p.Version == "" || p.ServerName != "localhost" {
		t.Errorf("negotiated %q, version %q, server name %q", p.TLS, p.Version, p.ServerName)
	}
	conf, err := os.ReadFile(p.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"require_certificate true", "use_identity_as_username true", "set_tcp_nodelay true", "persistence false", "max_connections -1", "tls_version tlsv1.3"} {
		if !strings.Contains(string(conf), want+"\n") {
			t.Errorf("mosquitto.conf lacks %q", want)
		}
	}

	roots, err := p.ServerRoots()
	if err != nil {
		t.Fatal(err)
	}
	load := func(cert, key string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := f.Devices[0], f.Devices[1]
	consumer := connectMQTT(t, p.Addr, load(f.ConsumerCertFile(), f.ConsumerKeyFile()), roots, f.Consumer)
	consumer.subscribe(t, "private/#")
	devA := connectMQTT(t, p.Addr, load(f.CertFile(a), f.KeyFile(a)), roots, a)
	devB := connectMQTT(t, p.Addr, load(f.CertFile(b), f.KeyFile(b)), roots, b)
	devB.subscribe(t, "private/"+b+"/#")

	// A into B's subtree (refused), then into its own: the consumer gets
	// the second, and would have got the first before it.
	devA.publish(t, "private/"+b+"/x", "intrusion")
	devA.publish(t, "private/"+a+"/x", "own")
	consumer.await(t, "private/"+a+"/x", "private/"+b+"/x")
	devB.quiet(t, 300*time.Millisecond)

	// B in its own subtree reaches both the consumer and its own
	// subscription.
	devB.publish(t, "private/"+b+"/y", "mine")
	consumer.await(t, "private/"+b+"/y")
	devB.await(t, "private/"+b+"/y")

	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.RSS < 1<<20 || st.FDs < 4 {
		t.Errorf("Mosquitto stats %+v", st)
	}
	if b, err := os.ReadFile(p.LogPath); err != nil || !strings.Contains(string(b), "mosquitto version") {
		t.Errorf("Mosquitto's log %s does not show its start (%v)", p.LogPath, err)
	}
}
