package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func connect(t *testing.T, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func receive(t *testing.T, ch <-chan Message) Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return Message{}
	}
}

func collect(ch chan<- Message) func(Message) {
	return func(m Message) { ch <- m }
}

// unusedAddr returns a local address nothing listens on.
func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func TestRoundTrip(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	c := connect(t, e.config(t))
	if c.ID() != e.id {
		t.Errorf("ID() = %q, want the certificate's %q", c.ID(), e.id)
	}

	// Uplink: the device may read its own subtree, so it can watch its
	// own uplink through the broker.
	up := make(chan Message, 4)
	if err := c.Subscribe(ctx, "private/"+e.id+"/up/+", 1, collect(up)); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := c.PublishUp(ctx, "telemetry", []byte(`{"temp":21.5}`), 1); err != nil {
		t.Fatalf("PublishUp: %v", err)
	}
	m := receive(t, up)
	if m.Topic != "private/"+e.id+"/up/telemetry" || string(m.Payload) != `{"temp":21.5}` || m.QoS != 1 || m.Channel != "" {
		t.Errorf("uplink arrived as %+v", m)
	}

	// Downlink: Warden publishes to private/<id>/down/<channel>.
	cmd := make(chan Message, 4)
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(cmd)); err != nil {
		t.Fatalf("SubscribeDown: %v", err)
	}
	all := make(chan Message, 4)
	if err := c.SubscribeDown(ctx, "+", 0, collect(all)); err != nil {
		t.Fatalf("SubscribeDown(+): %v", err)
	}
	if err := e.broker.srv.Publish("private/"+e.id+"/down/cmd", []byte("reboot"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, cmd); m.Channel != "cmd" || string(m.Payload) != "reboot" {
		t.Errorf("command arrived as %+v", m)
	}
	if m := receive(t, all); m.Channel != "cmd" {
		t.Errorf("wildcard subscription got %+v", m)
	}
	if err := e.broker.srv.Publish("private/"+e.id+"/down/température", []byte("x"), true, 0); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, all); m.Channel != "température" {
		t.Errorf("wildcard subscription got %+v", m)
	}
	select {
	case m := <-cmd:
		t.Errorf("the cmd handler got a message for another channel: %+v", m)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestBrokerRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	c := connect(t, e.config(t))

	tests := []struct {
		name string
		call func() error
		op   string
	}{
		{"publish to another device, QoS 1", func() error { return c.Publish(ctx, "private/other/up/x", []byte("x"), 1, false) }, "publish"},
		{"publish to the fleet tree, QoS 2", func() error { return c.Publish(ctx, "fleet/"+e.id+"/down/x", []byte("x"), 2, false) }, "publish"},
		{"subscribe to everything", func() error { return c.Subscribe(ctx, "#", 1, func(Message) {}) }, "subscribe"},
		{"subscribe to every device", func() error { return c.Subscribe(ctx, "private/+/up/#", 1, func(Message) {}) }, "subscribe"},
		{"subscribe to $SYS", func() error { return c.Subscribe(ctx, "$SYS/#", 0, func(Message) {}) }, "subscribe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var re *RefusedError
			if !errors.As(err, &re) {
				t.Fatalf("got %v, want a *RefusedError", err)
			}
			if re.Op != tt.op || re.ReasonCode != 0x87 {
				t.Errorf("got %+v, want op %s, reason code 0x87", re, tt.op)
			}
			if !strings.Contains(err.Error(), "not authorized") {
				t.Errorf("error %q does not say why", err)
			}
		})
	}

	// Refused filters are forgotten, so reconnection does not retry them.
	c.mu.Lock()
	n := len(c.subs)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d refused subscriptions are still registered", n)
	}
	// QoS 0 has no acknowledgement: the broker drops the message silently.
	if err := c.Publish(ctx, "private/other/up/x", []byte("x"), 0, false); err != nil {
		t.Errorf("QoS 0 publish: %v", err)
	}
	// The connection survives refusals.
	if err := c.PublishUp(ctx, "ok", []byte("x"), 1); err != nil {
		t.Errorf("PublishUp after refusals: %v", err)
	}
}

func TestConnectRefusedByBroker(t *testing.T) {
	e := newEnv(t)
	e.broker.refuse(e.id)
	cfg := e.config(t)
	cfg.Servers = []string{e.broker.url(), e.broker.url()} // every server refuses
	start := time.Now()
	c, err := Connect(testContext(t), cfg)
	if err == nil {
		_ = c.Close(context.Background())
		t.Fatal("Connect succeeded for a refused device")
	}
	var re *RefusedError
	if !errors.As(err, &re) || re.Op != "connect" || re.ReasonCode != 0x86 {
		t.Fatalf("got %v, want a connect *RefusedError with reason code 0x86", err)
	}
	if !strings.Contains(err.Error(), "registered and active") {
		t.Errorf("error %q does not say what to check", err)
	}
	// Connect gives up instead of spinning until its 10s context ends.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect took %v to report the refusal", d)
	}
}

func TestOnlyThePinnedRootIsTrusted(t *testing.T) {
	rogue, err := newTestCA("public CA")
	if err != nil {
		t.Fatal(err)
	}
	rogueServer, err := rogue.serverCert([]string{"localhost"}, localhost)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, ca, brokerOptions{serverCert: rogueServer, clientCAs: ca.pool})

	// Make the rogue CA a system root, to show it makes no difference.
	dir := t.TempDir()
	caFile := filepath.Join(dir, "system-roots.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rogue.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", caFile)
	t.Setenv("SSL_CERT_DIR", t.TempDir())
	if sys, err := x509.SystemCertPool(); err == nil {
		_, verr := rogueServer.Leaf.Verify(x509.VerifyOptions{Roots: sys, DNSName: "127.0.0.1"})
		if verr == nil {
			t.Log("the broker's certificate passes the system roots")
		} else {
			t.Logf("the system roots were loaded earlier in this process and do not include the rogue CA (%v); the refusal below still shows the pinned pool is used", verr)
		}
	}

	start := time.Now()
	c, err := Connect(testContext(t), e.config(t))
	if err == nil {
		_ = c.Close(context.Background())
		t.Fatal("Connect accepted a broker certificate from another CA")
	}
	var ve *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ve) || !errors.As(err, &ua) {
		t.Fatalf("got %v, want a certificate verification error (unknown authority)", err)
	}
	if !strings.Contains(err.Error(), "pinned Warden root") {
		t.Errorf("error %q does not say what to fix", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect took %v to report the bad certificate", d)
	}
}

func TestHostnameVerification(t *testing.T) {
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.serverCert([]string{"broker.example"}, nil) // no IP SAN
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, ca, brokerOptions{serverCert: srvCert, clientCAs: ca.pool})

	for _, name := range []string{"", "other.example"} {
		cfg := e.config(t)
		cfg.ServerName = name
		c, err := Connect(testContext(t), cfg)
		if err == nil {
			_ = c.Close(context.Background())
			t.Fatalf("ServerName %q: connected to a broker whose certificate names another host", name)
		}
		var he x509.HostnameError
		if !errors.As(err, &he) || !strings.Contains(err.Error(), "Config.ServerName") {
			t.Errorf("ServerName %q: got %v, want a host name error that mentions Config.ServerName", name, err)
		}
	}

	cfg := e.config(t)
	cfg.ServerName = "broker.example"
	c := connect(t, cfg)
	if err := c.PublishUp(testContext(t), "x", nil, 1); err != nil {
		t.Errorf("PublishUp with the right ServerName: %v", err)
	}
}

func TestReconnectRestoresSubscriptions(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	ups := make(chan struct{}, 8)
	downs := make(chan error, 8)
	cfg := e.config(t)
	cfg.OnConnectionUp = func() { ups <- struct{}{} }
	cfg.OnConnectionDown = func(err error) { downs <- err }
	c := connect(t, cfg)
	<-ups

	got := make(chan Message, 4)
	filter := "private/" + e.id + "/down/cmd"
	if err := c.SubscribeDown(ctx, "cmd", 1, collect(got)); err != nil {
		t.Fatal(err)
	}
	e.broker.awaitSubscribed(t, filter)

	for round := range 2 {
		if err := e.broker.kill(e.id); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-downs:
			if err == nil {
				t.Fatal("OnConnectionDown got a nil error")
			}
			t.Logf("round %d: connection down: %v", round, err)
		case <-time.After(5 * time.Second):
			t.Fatal("OnConnectionDown was not called")
		}
		select {
		case <-ups:
		case <-time.After(5 * time.Second):
			t.Fatal("the client did not reconnect")
		}
		e.broker.awaitSubscribed(t, filter)

		if err := e.broker.srv.Publish(filter, []byte("after reconnect"), false, 1); err != nil {
			t.Fatal(err)
		}
		if m := receive(t, got); string(m.Payload) != "after reconnect" {
			t.Errorf("got %+v", m)
		}
	}
	if err := c.AwaitConnection(ctx); err != nil {
		t.Errorf("AwaitConnection: %v", err)
	}
}

func TestConnectPacket(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct {
		expiry    time.Duration
		clean     bool
		expirySec uint32
	}{
		{0, true, 0},
		{time.Hour, false, 3600},
	} {
		cfg := e.config(t)
		cfg.SessionExpiry = tt.expiry
		c := connect(t, cfg)
		cl, ok := e.broker.srv.Clients.Get(e.id)
		if !ok {
			t.Fatal("the broker does not know the client")
		}
		p := cl.Properties
		if p.Clean != tt.clean || p.Props.SessionExpiryInterval != tt.expirySec || p.Props.ReceiveMaximum != DefaultReceiveMaximum {
			t.Errorf("SessionExpiry %v: CONNECT had clean start %v, session expiry %d, receive maximum %d; want %v, %d, %d",
				tt.expiry, p.Clean, p.Props.SessionExpiryInterval, p.Props.ReceiveMaximum, tt.clean, tt.expirySec, DefaultReceiveMaximum)
		}
		if err := c.Close(testContext(t)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestServersAreTriedInOrder(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(t)
	cfg.Servers = []string{"mqtts://" + unusedAddr(t), e.broker.url()}
	c := connect(t, cfg)
	if err := c.PublishUp(testContext(t), "x", nil, 1); err != nil {
		t.Errorf("PublishUp via the second server: %v", err)
	}
}

func TestWebSocket(t *testing.T) {
	ca, err := newTestCA("warden test root")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.serverCert([]string{"localhost"}, localhost)
	if err != nil {
		t.Fatal(err)
	}
	wss := unusedAddr(t) // mochi's WebSocket listener cannot report a :0 port
	e := newEnvWith(t, ca, brokerOptions{serverCert: srvCert, clientCAs: ca.pool, wssAddr: wss})
	cfg := e.config(t)
	cfg.Servers = []string{"wss://" + wss + "/mqtt"}
	c := connect(t, cfg)
	ctx := testContext(t)

	got := make(chan Message, 4)
	if err := c.Subscribe(ctx, "private/"+e.id+"/#", 1, collect(got)); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishUp(ctx, "telemetry", []byte("over websocket"), 1); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, got); string(m.Payload) != "over websocket" {
		t.Errorf("got %+v", m)
	}
	if err := e.broker.srv.Publish("private/"+e.id+"/down/cmd", []byte("down"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, got); m.Channel != "cmd" || string(m.Payload) != "down" {
		t.Errorf("got %+v", m)
	}
}

func TestClose(t *testing.T) {
	e := newEnv(t)
	c, err := Connect(testContext(t), e.config(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(testContext(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(time.Second):
		t.Fatal("Done is not closed after Close")
	}
	ctx := testContext(t)
	for name, err := range map[string]error{
		"Publish":         c.Publish(ctx, "private/"+e.id+"/up/x", nil, 1, false),
		"PublishUp":       c.PublishUp(ctx, "x", nil, 1),
		"Subscribe":       c.Subscribe(ctx, "private/"+e.id+"/#", 1, func(Message) {}),
		"SubscribeDown":   c.SubscribeDown(ctx, "x", 1, func(Message) {}),
		"AwaitConnection": c.AwaitConnection(ctx),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: got %v, want ErrClosed", name, err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// The broker saw a clean DISCONNECT, not a dropped connection.
	deadline := time.Now().Add(2 * time.Second)
	for {
		cl, ok := e.broker.srv.Clients.Get(e.id)
		if !ok || cl.Closed() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the broker still holds the connection after Close")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConnectGivesUpWhenContextEnds(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(t)
	cfg.Servers = []string{"mqtts://" + unusedAddr(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err == nil {
		_ = c.Close(context.Background())
		t.Fatal("Connect succeeded with no broker")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want it to wrap context.DeadlineExceeded", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "last attempt") {
		t.Errorf("got %v, want it to carry the last dial error", err)
	}
}

func TestLocalValidation(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	c := connect(t, e.config(t))
	h := func(Message) {}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"channel with a slash", c.PublishUp(ctx, "a/b", nil, 1), "must not contain"},
		{"wildcard channel for PublishUp", c.PublishUp(ctx, "+", nil, 1), "must not contain"},
		{"empty channel", c.PublishUp(ctx, "", nil, 1), "empty"},
		{"partial wildcard channel", c.SubscribeDown(ctx, "a+", 1, h), `exactly "+" or "#"`},
		{"QoS 3", c.PublishUp(ctx, "x", nil, 3), "QoS 3"},
		{"wildcard topic", c.Publish(ctx, "private/x/+", nil, 1, false), "not a valid topic name"},
		{"NUL in topic", c.Publish(ctx, "a\x00b", nil, 1, false), "not a valid topic name"},
		{"bad filter", c.Subscribe(ctx, "a#", 1, h), "not a valid topic filter"},
		{"bad shared filter", c.Subscribe(ctx, "$share//a", 1, h), "not a valid shared subscription"},
		{"nil handler", c.Subscribe(ctx, "private/"+e.id+"/#", 1, nil), "handler is nil"},
		{"subscribe QoS 3", c.Subscribe(ctx, "private/"+e.id+"/#", 3, h), "QoS 3"},
	}
	for _, tt := range tests {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, tt.err, tt.want)
		}
		var re *RefusedError
		if errors.As(tt.err, &re) {
			t.Errorf("%s: reached the broker; it should fail locally", tt.name)
		}
	}
}
