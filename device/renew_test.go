package device

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/envelope"
)

// renewEnv is a connected-device environment with Warden's onboarding
// fakes: the MQTT responder, an EST server and a recorder of the
// certificates the device connects with.
type renewEnv struct {
	*env
	is    *issuer
	ob    *fakeOnboardMQTT
	est   *fakeEST
	rec   *connRecorder
	certs chan tls.Certificate // OnCertificate calls
}

func newRenewEnv(t *testing.T) *renewEnv {
	t.Helper()
	e := newEnv(t)
	is := newIssuer(t, e.ca)
	return &renewEnv{
		env: e, is: is, ob: newFakeOnboardMQTT(t, e.broker, is), est: newFakeEST(t, e.ca, is, e.id),
		rec: addConnRecorder(t, e.broker), certs: make(chan tls.Certificate, 16),
	}
}

func (r *renewEnv) config(t *testing.T) Config {
	cfg := r.env.config(t)
	cfg.OnCertificate = func(c tls.Certificate) { r.certs <- c }
	return cfg
}

// installed waits for an OnCertificate call.
func (r *renewEnv) installed(t *testing.T) tls.Certificate {
	t.Helper()
	select {
	case c := <-r.certs:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no OnCertificate call within 10s")
		return tls.Certificate{}
	}
}

// reconnectedWith checks that the device's next session presents leaf with
// its chain.
func (r *renewEnv) reconnectedWith(t *testing.T, leaf *x509.Certificate) {
	t.Helper()
	s := r.rec.next(t, r.id)
	if s.leaf == nil || !s.leaf.Equal(leaf) {
		t.Fatalf("the device reconnected with %v, not the new certificate (serial %s)", s.leaf, leaf.SerialNumber.Text(16))
	}
	if s.chain != 2 {
		t.Errorf("the device sent %d certificates; want the leaf and its issuing CA", s.chain)
	}
}

func TestRenewOverMQTT(t *testing.T) {
	for _, newKey := range []bool{false, true} {
		t.Run(fmt.Sprintf("new key %v", newKey), func(t *testing.T) {
			r := newRenewEnv(t)
			ctx := testContext(t)
			c := connect(t, r.config(t))
			if s := r.rec.next(t, r.id); !s.leaf.Equal(r.cert.Leaf) {
				t.Fatal("the first session is not the configured certificate's")
			}
			var opts RenewOptions
			key := crypto.Signer(r.cert.PrivateKey.(*ecdsa.PrivateKey))
			if newKey {
				k := newP256(t)
				opts.NewKey, key = k, k
			}
			cert, err := c.Renew(ctx, opts)
			if err != nil {
				t.Fatalf("Renew: %v", err)
			}
			seen := r.ob.nextCSR(t)
			if seen.claim || seen.clientID != r.id || len(seen.req.Proof) != 0 {
				t.Errorf("CSR message %+v from %q", seen.req, seen.clientID)
			}
			issued := r.is.lastIssued()
			if !cert.Leaf.Equal(issued) || cert.PrivateKey != key || len(cert.Certificate) != 2 {
				t.Fatalf("Renew returned %+v, not the issued certificate with the CSR's key", cert)
			}
			if got := r.installed(t); !got.Leaf.Equal(issued) || got.PrivateKey != key {
				t.Errorf("OnCertificate got %v", got.Leaf)
			}
			if got := c.Certificate(); !got.Leaf.Equal(issued) {
				t.Errorf("Certificate() = %v after the renewal", got.Leaf)
			}
			r.reconnectedWith(t, issued)
			st := c.CertificateStats()
			if st.Renewals != 1 || st.Rotations != 0 || st.Dropped != 0 || st.Serial != issued.SerialNumber.Text(16) || !st.NotAfter.Equal(issued.NotAfter) {
				t.Errorf("stats %+v", st)
			}
			if err := c.PublishUp(ctx, "after", []byte("x"), 1); err != nil {
				t.Errorf("PublishUp after the renewal: %v", err)
			}
		})
	}
}

// TestRenewKeepsPublishesFlowing renews while the device publishes at QoS
// 1: every publish succeeds and reaches the broker, none is cut off by the
// switch to the new certificate.
func TestRenewKeepsPublishesFlowing(t *testing.T) {
	r := newRenewEnv(t)
	ctx := testContext(t)
	var mu sync.Mutex
	got := make(map[string]int)
	if err := r.broker.srv.Subscribe("private/"+r.id+"/up/#", 31, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		mu.Lock()
		got[string(pk.Payload)]++
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	c := connect(t, r.config(t))
	r.rec.next(t, r.id)

	const n = 300
	errs := make(chan error, n)
	var wg sync.WaitGroup
	started := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / 3 {
				if w == 0 && i == 10 {
					close(started)
				}
				errs <- c.PublishUp(ctx, "telemetry", fmt.Appendf(nil, "%d-%d", w, i), 1)
			}
		}()
	}
	<-started
	if _, err := c.Renew(ctx, RenewOptions{}); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a publish failed across the renewal: %v", err)
		}
	}
	r.reconnectedWith(t, r.is.lastIssued())
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		count := len(got)
		mu.Unlock()
		if count == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the broker got %d of %d messages", count, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRenewOverEST(t *testing.T) {
	for _, fromConfig := range []bool{false, true} {
		t.Run(fmt.Sprintf("server from config %v", fromConfig), func(t *testing.T) {
			r := newRenewEnv(t)
			cfg := r.config(t)
			opts := RenewOptions{Via: RenewViaEST}
			if fromConfig {
				cfg.RenewESTServer = r.est.url()
			} else {
				opts.ESTServer = r.est.url()
			}
			c := connect(t, cfg)
			r.rec.next(t, r.id)
			cert, err := c.Renew(testContext(t), opts)
			if err != nil {
				t.Fatalf("Renew: %v", err)
			}
			reqs := r.est.seen()
			if len(reqs) != 1 || reqs[0].path != enrollproto.PathSimpleReenroll {
				t.Fatalf("the EST server saw %+v", reqs)
			}
			if reqs[0].clientCert == nil || !reqs[0].clientCert.Equal(r.cert.Leaf) {
				t.Errorf("simplereenroll saw client certificate %v, want the current one", reqs[0].clientCert)
			}
			if reqs[0].csrCN != r.id {
				t.Errorf("CSR common name %q", reqs[0].csrCN)
			}
			if !cert.Leaf.Equal(r.is.lastIssued()) {
				t.Fatal("Renew did not return the issued certificate")
			}
			r.installed(t)
			r.reconnectedWith(t, cert.Leaf)

			// The next renewal authenticates with the renewed certificate.
			if _, err := c.Renew(testContext(t), opts); err != nil {
				t.Fatalf("second Renew: %v", err)
			}
			if reqs := r.est.seen(); len(reqs) != 2 || !reqs[1].clientCert.Equal(cert.Leaf) {
				t.Errorf("the second simplereenroll did not present the renewed certificate")
			}
		})
	}
}

func TestRenewFailures(t *testing.T) {
	tests := []struct {
		name    string
		via     string
		setup   func(r *renewEnv)
		refused bool
		want    string
	}{
		{"refused over MQTT", RenewViaMQTT, func(r *renewEnv) { r.is.queue(answerRefuse) }, true, "still active"},
		{"error over MQTT", RenewViaMQTT, func(r *renewEnv) { r.is.queue(answerError) }, false, "try again later"},
		{"another key over MQTT", RenewViaMQTT, func(r *renewEnv) { r.is.queue(answerOtherKey) }, false, "another key"},
		{"another device over MQTT", RenewViaMQTT, func(r *renewEnv) { r.is.queue(answerOtherDevice) }, false, "not this device"},
		{"foreign CA over MQTT", RenewViaMQTT, func(r *renewEnv) { r.is.queue(answerForeignCA) }, false, "pinned Warden root"},
		{"no answer over MQTT", RenewViaMQTT, func(r *renewEnv) { r.is.queue(answerSilent) }, false, "no answer"},
		{"403 over EST", RenewViaEST, func(r *renewEnv) { r.est.setStatus(http.StatusForbidden) }, true, "403"},
		{"foreign CA over EST", RenewViaEST, func(r *renewEnv) { r.is.queue(answerForeignCA) }, false, "pinned Warden root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRenewEnv(t)
			cfg := r.config(t)
			cfg.RenewESTServer = r.est.url()
			c := connect(t, cfg)
			r.rec.next(t, r.id)
			tt.setup(r)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := c.Renew(ctx, RenewOptions{Via: tt.via})
			if err == nil {
				t.Fatal("Renew succeeded")
			}
			t.Logf("error: %v", err)
			if errors.Is(err, ErrRenewRefused) != tt.refused {
				t.Errorf("errors.Is(ErrRenewRefused) = %v, want %v", !tt.refused, tt.refused)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if got := c.Certificate(); !got.Leaf.Equal(r.cert.Leaf) {
				t.Error("a failed renewal changed the certificate")
			}
			select {
			case s := <-r.rec.ch:
				t.Errorf("the device reconnected (%+v) after a failed renewal", s)
			case <-time.After(50 * time.Millisecond):
			}
			if st := c.CertificateStats(); st.Renewals != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestRenewRefusesBadOptions(t *testing.T) {
	r := newRenewEnv(t)
	c := connect(t, r.config(t))
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts RenewOptions
		want string
	}{
		{"unknown via", RenewOptions{Via: "carrier pigeon"}, "RenewOptions.Via"},
		{"EST without a server", RenewOptions{Via: RenewViaEST}, "ESTServer"},
		{"EST over http", RenewOptions{Via: RenewViaEST, ESTServer: "http://x"}, "https://"},
		{"P-384 key", RenewOptions{NewKey: p384}, "P-256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Renew(testContext(t), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			}
		})
	}
	ctx := testContext(t)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Renew(ctx, RenewOptions{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Renew after Close: %v", err)
	}
}

// expiringSoon is a device certificate that expires 1 to 2 seconds from
// now: certificates carry whole seconds.
func expiringSoon(t *testing.T, r *renewEnv, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	nb := time.Now().Truncate(time.Second).Add(-time.Minute)
	return issueLeaf(t, r.ca, r.id, []string{deviceURN(r.id)}, key.Public(), nb, time.Minute+2*time.Second)
}

func TestRenewExpiredCertificate(t *testing.T) {
	r := newRenewEnv(t)
	key := r.cert.PrivateKey.(*ecdsa.PrivateKey)
	leaf := expiringSoon(t, r, key)
	cfg := r.config(t)
	cfg.Certificate = tlsCert(key, leaf)
	c := connect(t, cfg)
	time.Sleep(time.Until(leaf.NotAfter) + 10*time.Millisecond)
	_, err := c.Renew(testContext(t), RenewOptions{})
	if !errors.Is(err, ErrCertificateExpired) || !strings.Contains(err.Error(), "Enroll") {
		t.Fatalf("Renew with an expired certificate: %v", err)
	}
}

func TestRotationDelivery(t *testing.T) {
	r := newRenewEnv(t)
	c := connect(t, r.config(t))
	r.rec.next(t, r.id)
	r.broker.awaitSubscribed(t, enrollproto.Topic(r.id, enrollproto.ChannelNew))

	// A CA rotation re-issues the certificate from its stored CSR under a
	// new issuing CA: same key, same device, same root.
	issuing2 := newIssuingCA(t, r.ca, "warden issuing 2")
	leaf := issueLeaf(t, issuing2, r.id, []string{deviceURN(r.id)}, r.cert.Leaf.PublicKey, time.Now(), time.Hour)
	r.ob.deliver(r.id, leaf, issuing2.cert)

	got := r.installed(t)
	if !got.Leaf.Equal(leaf) || got.PrivateKey != r.cert.PrivateKey {
		t.Fatalf("OnCertificate got %v", got.Leaf)
	}
	r.reconnectedWith(t, leaf)
	if cur := c.Certificate(); !cur.Leaf.Equal(leaf) {
		t.Errorf("Certificate() = %v", cur.Leaf)
	}
	if st := c.CertificateStats(); st.Rotations != 1 || st.Renewals != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}

	// The same delivery again (Warden resends until the device connects
	// with it) changes nothing.
	r.ob.deliver(r.id, leaf, issuing2.cert)
	select {
	case s := <-r.rec.ch:
		t.Errorf("a repeated delivery made the device reconnect: %+v", s)
	case <-time.After(200 * time.Millisecond):
	}
	if st := c.CertificateStats(); st.Rotations != 1 || st.Dropped != 0 {
		t.Errorf("stats after a repeated delivery %+v", st)
	}
}

func TestRotationDeliveryRefusals(t *testing.T) {
	r := newRenewEnv(t)
	c := connect(t, r.config(t))
	r.rec.next(t, r.id)
	r.broker.awaitSubscribed(t, enrollproto.Topic(r.id, enrollproto.ChannelNew))
	pub := r.cert.Leaf.PublicKey
	now := time.Now()
	tests := []struct {
		name    string
		publish func()
	}{
		{"another key", func() {
			r.ob.deliver(r.id, issueLeaf(t, r.is.issuing, r.id, []string{deviceURN(r.id)}, newP256(t).Public(), now, time.Hour), r.is.issuing.cert)
		}},
		{"another device", func() {
			r.ob.deliver(r.id, issueLeaf(t, r.is.issuing, "other", []string{deviceURN("other")}, pub, now, time.Hour), r.is.issuing.cert)
		}},
		{"foreign root", func() {
			r.ob.deliver(r.id, issueLeaf(t, r.is.foreign, r.id, []string{deviceURN(r.id)}, pub, now, time.Hour), r.is.foreign.cert)
		}},
		{"expired", func() {
			r.ob.deliver(r.id, issueLeaf(t, r.is.issuing, r.id, []string{deviceURN(r.id)}, pub, now.Add(-2*time.Hour), time.Hour), r.is.issuing.cert)
		}},
		{"not JSON", func() { r.ob.reply(r.id, enrollproto.ChannelNew, "not a response") }},
		{"unsolicited without rotation", func() {
			r.ob.reply(r.id, enrollproto.ChannelNew, enrollproto.CertResponse{Status: enrollproto.StatusRefused})
		}},
		{"answer to no request", func() {
			r.ob.reply(r.id, enrollproto.ChannelNew, enrollproto.CertResponse{RequestID: "nobody-asked", Status: enrollproto.StatusRefused})
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.publish()
			deadline := time.Now().Add(5 * time.Second)
			for c.CertificateStats().Dropped != uint64(i+1) {
				if time.Now().After(deadline) {
					t.Fatalf("stats %+v: the delivery was not counted as dropped", c.CertificateStats())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	select {
	case s := <-r.rec.ch:
		t.Errorf("the device reconnected after bogus deliveries: %+v", s)
	case got := <-r.certs:
		t.Errorf("a bogus delivery was installed: %v", got.Leaf)
	case <-time.After(100 * time.Millisecond):
	}
	if cur := c.Certificate(); !cur.Leaf.Equal(r.cert.Leaf) {
		t.Error("a bogus delivery changed the certificate")
	}
	if st := c.CertificateStats(); st.Rotations != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestAutoRenew(t *testing.T) {
	for _, via := range []string{RenewViaMQTT, RenewViaEST} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			r := newRenewEnv(t)
			// A certificate of 3s whose validity starts on a whole second,
			// as certificates carry seconds only: it is renewed 2s after
			// NotBefore, plus up to 0.3s of jitter.
			const lifetime = 3 * time.Second
			notBefore := time.Now().Truncate(time.Second)
			oldKey := r.cert.PrivateKey.(*ecdsa.PrivateKey)
			leaf := issueLeaf(t, r.ca, r.id, []string{deviceURN(r.id)}, oldKey.Public(), notBefore, lifetime)
			newKey := newP256(t)
			cfg := r.config(t)
			cfg.Certificate = tlsCert(oldKey, leaf)
			cfg.AutoRenew, cfg.RenewVia, cfg.RenewESTServer = true, via, r.est.url()
			cfg.RenewKey = func() (crypto.Signer, error) { return newKey, nil }
			// The first attempt is refused: the client retries with backoff.
			r.is.queue(answerRefuse)
			c := connect(t, cfg)
			r.rec.next(t, r.id)

			got := r.installed(t)
			at := time.Now()
			earliest := notBefore.Add(lifetime * 2 / 3)
			latest := earliest.Add(lifetime/10 + 500*time.Millisecond) // jitter, backoff and slack
			if at.Before(earliest) || at.After(latest) {
				t.Errorf("renewed %v after NotBefore; want between %v and %v", at.Sub(notBefore), earliest.Sub(notBefore), latest.Sub(notBefore))
			}
			if !got.Leaf.Equal(r.is.lastIssued()) || got.PrivateKey != newKey {
				t.Errorf("installed %v with key %T; want the issued certificate with RenewKey's key", got.Leaf, got.PrivateKey)
			}
			r.reconnectedWith(t, got.Leaf)
			st := c.CertificateStats()
			if st.Renewals != 1 || st.RenewalFailures != 1 {
				t.Errorf("stats %+v; want one renewal after one failure", st)
			}
			// The new certificate lives an hour: no renewal before long.
			select {
			case c := <-r.certs:
				t.Errorf("renewed again at once: %v", c.Leaf)
			case <-time.After(300 * time.Millisecond):
			}
		})
	}
}

func TestAutoRenewStopsOnExpiry(t *testing.T) {
	r := newRenewEnv(t)
	key := r.cert.PrivateKey.(*ecdsa.PrivateKey)
	leaf := expiringSoon(t, r, key) // past two thirds of its lifetime already
	cfg := r.config(t)
	cfg.Certificate = tlsCert(key, leaf)
	cfg.AutoRenew = true
	// Warden refuses every renewal: the client retries with backoff until
	// the certificate has expired, and then stops.
	for range 1000 {
		r.is.queue(answerRefuse)
	}
	c := connect(t, cfg)
	time.Sleep(time.Until(leaf.NotAfter) + 100*time.Millisecond)
	before := r.ob.csrN.Load()
	time.Sleep(500 * time.Millisecond) // more than MaxBackoff
	if after := r.ob.csrN.Load(); after != before {
		t.Errorf("%d renewal attempts after the certificate expired", after-before)
	}
	st := c.CertificateStats()
	if st.Renewals != 0 || st.RenewalFailures == 0 || uint64(before) != st.RenewalFailures {
		t.Errorf("stats %+v after %d attempts; want every attempt counted as a failure", st, before)
	}
}

func TestClaim(t *testing.T) {
	r := newRenewEnv(t)
	ctx := testContext(t)
	c := connect(t, r.config(t))
	const good, bad = "aGVhZGVy..Y2lwaGVy.Z29vZA", "aGVhZGVy..Y2lwaGVy.YmFk"
	r.ob.bindable(good)
	if err := c.Claim(ctx, good); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if req := <-r.ob.claims; req.Token != good || req.RequestID == "" {
		t.Errorf("claim message %+v", req)
	}
	for _, tok := range []string{bad, good} { // an unknown token, and a used one
		err := c.Claim(ctx, tok)
		if !errors.Is(err, ErrClaimRefused) {
			t.Errorf("Claim(%q) = %v, want ErrClaimRefused", tok, err)
		}
	}
	for _, tok := range []string{"", "not a token", strings.Repeat("a", enrollproto.MaxClaimToken+1)} {
		if err := c.Claim(ctx, tok); err == nil || errors.Is(err, ErrClaimRefused) {
			t.Errorf("Claim(%.20q) = %v, want a local error", tok, err)
		}
	}
	// The answer topics are the SDK's.
	for _, topic := range []string{enrollproto.Topic(r.id, enrollproto.ChannelNew), enrollproto.Topic(r.id, enrollproto.ChannelClaimResult)} {
		if err := c.Subscribe(ctx, topic, 1, func(Message) {}); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("Subscribe(%q) = %v, want it reserved", topic, err)
		}
	}
}

// TestEnvelopeDeviceOnboarding: an envelope device seals its claim and
// CSR messages when it seals its uplinks, as Warden then opens every
// message of the device; one without a certificate does not subscribe
// cert/new and cannot renew.
func TestEnvelopeDeviceOnboarding(t *testing.T) {
	t.Run("plain, no certificate", func(t *testing.T) {
		e, si := newEnvelopeEnv(t, envelope.CCM8)
		ob := newFakeOnboardMQTT(t, e.broker, newIssuer(t, e.ca))
		ob.open = standInOpener(si)
		c := connect(t, e.plainConfig(t, si.envelope(t)))
		if subs := c.ob.subscriptions(); len(subs) != 0 {
			t.Errorf("a client without a certificate subscribes %v", subs[0].filter)
		}
		const tok = "aGVhZGVy..Y2lwaGVy.dGFn"
		ob.bindable(tok)
		if err := c.Claim(testContext(t), tok); err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if st := c.EnvelopeStats(); st.Sealed != 1 {
			t.Errorf("envelope stats %+v; want the claim sealed", st)
		}
		if _, err := c.Renew(testContext(t), RenewOptions{}); err == nil || !strings.Contains(err.Error(), "no certificate") {
			t.Errorf("Renew without a certificate: %v", err)
		}
	})
	t.Run("required over TLS", func(t *testing.T) {
		e, si := newEnvelopeEnv(t, envelope.CCM8)
		is := newIssuer(t, e.ca)
		ob := newFakeOnboardMQTT(t, e.broker, is)
		ob.open = standInOpener(si)
		env := si.envelope(t)
		env.Required = true
		cfg := e.config(t)
		cfg.Envelope = env
		c := connect(t, cfg)
		cert, err := c.Renew(testContext(t), RenewOptions{})
		if err != nil {
			t.Fatalf("Renew: %v", err)
		}
		if !cert.Leaf.Equal(is.lastIssued()) {
			t.Error("Renew did not return the issued certificate")
		}
		if st := c.EnvelopeStats(); st.Sealed != 1 {
			t.Errorf("envelope stats %+v; want the CSR sealed", st)
		}
	})
	t.Run("sign-p256 keeps its key", func(t *testing.T) {
		e, si := newEnvelopeEnv(t, envelope.SignP256)
		cfg := e.config(t)
		cfg.Envelope = si.envelope(t)
		c := connect(t, cfg)
		_, err := c.Renew(testContext(t), RenewOptions{NewKey: newP256(t)})
		if err == nil || !strings.Contains(err.Error(), "must keep its key") {
			t.Errorf("Renew with a new key for sign-p256: %v", err)
		}
	})
}

func TestRenewalConfigValidation(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.SignP256)
	key := func() (crypto.Signer, error) { return newP256(t), nil }
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"unknown via", func(c *Config) { c.RenewVia = "x" }, "Config.RenewVia"},
		{"est without server", func(c *Config) { c.RenewVia = RenewViaEST }, "Config.RenewESTServer is empty"},
		{"http EST server", func(c *Config) { c.RenewESTServer = "http://warden" }, "https://"},
		{"auto renew without certificate", func(c *Config) {
			*c = e.plainConfig(t, &Envelope{Suite: envelope.CCM8, Secret: make([]byte, 16), Counter: memCounter(t)})
			c.AutoRenew = true
		}, "no certificate"},
		{"auto renew without roots", func(c *Config) {
			*c = e.plainConfig(t, si.envelope(t))
			c.AutoRenew = true
		}, "RootCAs"},
		{"renew key for sign-p256", func(c *Config) {
			c.Envelope = si.envelope(t)
			c.RenewKey = key
		}, "must keep its key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.config(t)
			tt.mod(&cfg)
			_, err := Connect(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestRenewalTime(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(30 * 24 * time.Hour)
	if got := renewalTime(nb, na, 0); got != nb.Add(20*24*time.Hour) {
		t.Errorf("renewalTime without jitter = %v", got)
	}
	for range 1000 {
		j := renewalJitter(nb, na)
		if j < 0 || j > 3*24*time.Hour {
			t.Fatalf("jitter %v is outside [0, lifetime/10]", j)
		}
	}
	if j := renewalJitter(na, nb); j != 0 {
		t.Errorf("jitter of a backwards validity = %v", j)
	}
}

func TestPublishGate(t *testing.T) {
	var g publishGate
	ctx := testContext(t)
	if err := g.enter(ctx); err != nil {
		t.Fatal(err)
	}
	drained := g.hold()
	select {
	case <-drained:
		t.Fatal("drained with a publish in flight")
	default:
	}
	entered := make(chan error, 1)
	go func() { entered <- g.enter(ctx) }()
	select {
	case <-entered:
		t.Fatal("a publish entered while the gate is held")
	case <-time.After(20 * time.Millisecond):
	}
	g.leave()
	<-drained
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := g.enter(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("enter on a held gate with an ending context: %v", err)
	}
	g.release()
	if err := <-entered; err != nil {
		t.Fatal(err)
	}
	g.leave()
	if d := g.hold(); d == nil {
		t.Fatal("no drained channel")
	} else {
		<-d // nothing in flight
	}
	g.release()
}
