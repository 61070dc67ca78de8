package device

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/envelope"
)

func TestLocalAddrValidation(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		addr string
		want string // "" accepts it; otherwise a fragment of the error
		ip   string // the address the settings keep
	}{
		{"", "", ""},
		{"127.0.0.2", "", "127.0.0.2"},
		{"::1", "", "::1"},
		{"::ffff:127.0.0.3", "", "127.0.0.3"}, // an IPv4-mapped address is the IPv4 address
		{"fe80::1%lo", "", "fe80::1"},
		{"localhost", "not an IP address", ""},
		{"127.0.0.2:4000", "not an IP address", ""},
		{"127.0.0.256", "not an IP address", ""},
		{" 127.0.0.2", "not an IP address", ""},
		{"0.0.0.0", "cannot be a source address", ""},
		{"::", "cannot be a source address", ""},
		{"224.0.0.1", "cannot be a source address", ""},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			cfg := e.config(t)
			cfg.LocalAddr = tc.addr
			s, err := cfg.validate()
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Config.LocalAddr") {
					t.Fatalf("validate(LocalAddr %q) = %v, want an error naming Config.LocalAddr with %q", tc.addr, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("validate(LocalAddr %q): %v", tc.addr, err)
			}
			switch {
			case tc.ip == "" && s.localAddr != nil:
				t.Errorf("an empty LocalAddr kept %v", s.localAddr)
			case tc.ip != "" && (s.localAddr == nil || s.localAddr.IP.String() != tc.ip || s.localAddr.Port != 0):
				t.Errorf("LocalAddr %q kept as %v, want %s port 0", tc.addr, s.localAddr, tc.ip)
			}
		})
	}
}

// remoteIP is the source address the broker sees for client id.
func remoteIP(t *testing.T, b *testBroker, id string) string {
	t.Helper()
	cl, ok := b.srv.Clients.Get(id)
	if !ok {
		t.Fatalf("the broker does not know client %q", id)
	}
	host, _, err := net.SplitHostPort(cl.Net.Remote)
	if err != nil {
		t.Fatalf("remote address %q: %v", cl.Net.Remote, err)
	}
	return host
}

// Every kind of MQTT connection is made from LocalAddr: the broker sees
// it as the peer's address. The whole of 127.0.0.0/8 is loopback on
// Linux, so 127.0.0.x needs no setup.
func TestLocalAddrIsTheSource(t *testing.T) {
	t.Run("mqtts", func(t *testing.T) {
		e := newEnv(t)
		cfg := e.config(t)
		cfg.LocalAddr = "127.0.0.2"
		c := connect(t, cfg)
		if got := remoteIP(t, e.broker, e.id); got != "127.0.0.2" {
			t.Errorf("the broker sees the device at %s, want 127.0.0.2", got)
		}
		// It holds across reconnections, which dial again.
		if err := e.broker.kill(e.id); err != nil {
			t.Fatal(err)
		}
		e.broker.awaitGone(t, e.id)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if cl, ok := e.broker.srv.Clients.Get(e.id); ok && !cl.Closed() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the device did not reconnect within 5s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := c.AwaitConnection(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if got := remoteIP(t, e.broker, e.id); got != "127.0.0.2" {
			t.Errorf("after a reconnection the broker sees the device at %s, want 127.0.0.2", got)
		}
	})
	t.Run("default", func(t *testing.T) {
		e := newEnv(t)
		connect(t, e.config(t))
		if got := remoteIP(t, e.broker, e.id); got != "127.0.0.1" {
			t.Errorf("without LocalAddr the broker sees the device at %s, want the system's choice 127.0.0.1", got)
		}
	})
	t.Run("wss", func(t *testing.T) {
		ca, err := newTestCA("warden test root")
		if err != nil {
			t.Fatal(err)
		}
		srvCert, err := ca.serverCert([]string{"localhost"}, localhost)
		if err != nil {
			t.Fatal(err)
		}
		wss := unusedAddr(t)
		e := newEnvWith(t, ca, brokerOptions{serverCert: srvCert, clientCAs: ca.pool, wssAddr: wss})
		cfg := e.config(t)
		cfg.Servers = []string{"wss://" + wss + "/mqtt"}
		cfg.LocalAddr = "127.0.0.3"
		connect(t, cfg)
		if got := remoteIP(t, e.broker, e.id); got != "127.0.0.3" {
			t.Errorf("over WebSocket the broker sees the device at %s, want 127.0.0.3", got)
		}
	})
	t.Run("plain", func(t *testing.T) {
		e, si := newEnvelopeEnv(t, envelope.CCM8)
		cfg := e.plainConfig(t, si.envelope(t))
		cfg.LocalAddr = "127.0.0.4"
		connect(t, cfg)
		if got := remoteIP(t, e.broker, e.id); got != "127.0.0.4" {
			t.Errorf("over the plain listener the broker sees the device at %s, want 127.0.0.4", got)
		}
	})
}

// An address that is not this host's fails each attempt with the
// system's error, which Connect reports.
func TestLocalAddrNotOnThisHost(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(t)
	cfg.LocalAddr = "192.0.2.1" // TEST-NET-1: assigned to nobody
	ctx := testContext(t)
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := Connect(short, cfg)
	if err == nil {
		_ = c.Close(ctx)
		t.Skip("this host has 192.0.2.1; nothing to check")
	}
	if !strings.Contains(err.Error(), "assign requested address") {
		t.Errorf("Connect from a foreign address: %v; want the system's bind error", err)
	}
}
