package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/keystore"
)

// testClock is a clock tests move by hand; safe for concurrent use.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: testNow} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newClockCA initialises a CA whose clock the test controls.
func newClockCA(t *testing.T) (*Authority, string, *keystore.Keystore, *testClock) {
	t.Helper()
	clk := newTestClock()
	opts := testOptions()
	opts.Now = clk.Now
	dir := filepath.Join(t.TempDir(), "pki")
	ks := newKeystore(t, 1)
	a, err := Init(dir, ks, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a, dir, ks, clk
}

// device is a device certificate with its key.
type device struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func issueDevice(t *testing.T, a *Authority, id string) device {
	t.Helper()
	key, csr := newCSR(t, id)
	cert, err := a.IssueDevice(csr, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	return device{cert, key}
}

// trusts reports whether pool accepts cert as a client certificate at now.
func trusts(pool *x509.CertPool, cert *x509.Certificate, now time.Time) bool {
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// handshake runs a real mutual-TLS handshake between a server configured
// from a (certificate and ClientCAs taken per connection, as a server that
// follows rotations does) and dev, which trusts only the root.
func handshake(t *testing.T, a *Authority, dev device, now time.Time) error {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.RootPEM())
	clock := func() time.Time { return now }
	serverConf := &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			sc, err := a.ServerCertificate()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				Certificates: []tls.Certificate{sc},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    a.ClientCAs(),
				Time:         clock,
				MinVersion:   tls.VersionTLS13,
			}, nil
		},
		MinVersion: tls.VersionTLS13,
	}
	clientConf := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{dev.cert.Raw}, PrivateKey: dev.key}},
		RootCAs:      roots,
		ServerName:   "broker.example.com",
		Time:         clock,
		MinVersion:   tls.VersionTLS13,
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	server := tls.Server(c1, serverConf)
	client := tls.Client(c2, clientConf)
	errc := make(chan error, 1)
	go func() {
		err := server.Handshake()
		c1.Close()
		errc <- err
	}()
	cerr := client.Handshake()
	if cerr == nil {
		// In TLS 1.3 the client finishes before the server has checked its
		// certificate; a read surfaces the server's verdict.
		c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, cerr = client.Read(make([]byte, 1))
		if errors.Is(cerr, net.ErrClosed) || cerr != nil && strings.Contains(cerr.Error(), "EOF") {
			cerr = nil
		}
	}
	if serr := <-errc; serr != nil {
		return serr
	}
	return cerr
}

func fingerprints(infos []IssuerInfo) []string {
	var out []string
	for _, i := range infos {
		out = append(out, i.Fingerprint[:8]+":"+i.State)
	}
	return out
}

func readState(t *testing.T, dir string) *stateFile {
	t.Helper()
	st, err := parseState(read(t, dir, "authority.json"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestRotate(t *testing.T) {
	a, dir, ks, clk := newClockCA(t)
	old := a.Issuing()
	oldServer, _ := a.ServerCertificate()
	oldDev := issueDevice(t, a, "dev1")
	gen := a.Generation()

	clk.Add(time.Hour)
	info, err := a.Rotate(7 * 24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cur := a.Issuing()
	if cur.Equal(old) || !info.Certificate.Equal(cur) || info.Fingerprint != Fingerprint(cur) || info.State != IssuerCurrent || !info.Created.Equal(testNow.Add(time.Hour)) {
		t.Fatalf("Rotate returned %+v; Issuing is %s", info, cur.Subject.CommonName)
	}
	if a.Generation() == gen {
		t.Error("Generation unchanged by Rotate")
	}

	// Same profile as Init's, under the same root.
	if !strings.HasPrefix(cur.Subject.CommonName, "Warden Issuing CA ") || cur.Subject.CommonName == old.Subject.CommonName {
		t.Errorf("new issuing CA CN %q (old %q)", cur.Subject.CommonName, old.Subject.CommonName)
	}
	if err := cur.CheckSignatureFrom(a.Root()); err != nil {
		t.Errorf("new issuing CA not signed by the root: %v", err)
	}
	if !cur.IsCA || cur.MaxPathLen != 0 || !cur.MaxPathLenZero || cur.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign || !bytes.Equal(cur.AuthorityKeyId, a.Root().SubjectKeyId) {
		t.Errorf("new issuing CA profile: CA %v pathlen %d/%v KU %v", cur.IsCA, cur.MaxPathLen, cur.MaxPathLenZero, cur.KeyUsage)
	}
	if got := cur.NotAfter.Sub(clk.Now()); got != 10*365*24*time.Hour {
		t.Errorf("new issuing CA lifetime %v", got)
	}

	issuers := a.Issuers()
	if len(issuers) != 2 || issuers[0].State != IssuerCurrent || issuers[1].State != IssuerGrace || issuers[1].Fingerprint != Fingerprint(old) {
		t.Fatalf("Issuers = %v", fingerprints(issuers))
	}
	if !issuers[1].GraceUntil.Equal(clk.Now().Add(7*24*time.Hour)) || !issuers[1].Created.Equal(testNow) {
		t.Errorf("old issuer %+v", issuers[1])
	}

	// New certificates chain to the new issuing CA, not the old one.
	dev := issueDevice(t, a, "dev1")
	if err := dev.cert.CheckSignatureFrom(cur); err != nil {
		t.Fatalf("device certificate not signed by the new issuing CA: %v", err)
	}
	if dev.cert.CheckSignatureFrom(old) == nil || !bytes.Equal(dev.cert.AuthorityKeyId, cur.SubjectKeyId) {
		t.Fatal("device certificate signed by the old issuing CA")
	}
	// Devices that pin the root accept the chain the server now sends.
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(a.Root())
	inter.AddCert(cur)
	if chains, err := dev.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || len(chains[0]) != 3 {
		t.Errorf("device certificate does not chain to the root through the new issuing CA: %v", err)
	}
	if got, ok := a.IssuerOf(dev.cert); !ok || got.Fingerprint != info.Fingerprint {
		t.Errorf("IssuerOf(new device) = %v %v", got.Fingerprint, ok)
	}
	if got, ok := a.IssuerOf(oldDev.cert); !ok || got.Fingerprint != Fingerprint(old) || got.State != IssuerGrace {
		t.Errorf("IssuerOf(old device) = %v %v %v", got.Fingerprint, got.State, ok)
	}
	if _, ok := a.IssuerOf(a.Root()); ok {
		t.Error("IssuerOf claims the root")
	}

	// The server certificate is re-issued under the new issuing CA, for the
	// same names, with a new key.
	sc, err := a.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if len(sc.Certificate) != 2 || !bytes.Equal(sc.Certificate[1], cur.Raw) || sc.Leaf.CheckSignatureFrom(cur) != nil {
		t.Fatal("server chain is not leaf + new issuing CA")
	}
	if sc.PrivateKey.(*ecdsa.PrivateKey).Equal(oldServer.PrivateKey) {
		t.Error("server key kept")
	}
	if fmt.Sprint(sc.Leaf.Subject.CommonName, sc.Leaf.DNSNames, sc.Leaf.IPAddresses) != fmt.Sprint(oldServer.Leaf.Subject.CommonName, oldServer.Leaf.DNSNames, oldServer.Leaf.IPAddresses) {
		t.Errorf("server names changed: %q %v %v", sc.Leaf.Subject.CommonName, sc.Leaf.DNSNames, sc.Leaf.IPAddresses)
	}

	// Both devices connect during the grace period.
	for name, d := range map[string]device{"old": oldDev, "new": dev} {
		if err := handshake(t, a, d, clk.Now()); err != nil {
			t.Errorf("%s device handshake during grace: %v", name, err)
		}
	}

	// The CRL is signed by the current issuing CA.
	der, err := a.SignCRL(nil)
	if err != nil {
		t.Fatal(err)
	}
	crl, _ := x509.ParseRevocationList(der)
	if err := crl.CheckSignatureFrom(cur); err != nil {
		t.Errorf("CRL not signed by the new issuing CA: %v", err)
	}

	// On disk: the current issuer in issuing.*, the old certificate (not its
	// key) in issuers/, authority.json version 2 without a pending switch.
	if !bytes.Equal(read(t, dir, "issuing.crt"), certPEM(cur)) {
		t.Error("issuing.crt is not the new issuing CA")
	}
	key, err := openKey(ks, dir, "issuing.key.sealed", recordIssuingKey)
	if err != nil || !key.PublicKey.Equal(cur.PublicKey) {
		t.Errorf("issuing.key.sealed does not hold the new key: %v", err)
	}
	archived := filepath.Join("issuers", Fingerprint(old)+".crt")
	if !bytes.Equal(read(t, dir, archived), certPEM(old)) {
		t.Error("old issuing CA not archived")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "issuers"))
	if len(entries) != 1 {
		t.Errorf("issuers/ holds %d files, want 1 (no keys)", len(entries))
	}
	if runtime.GOOS != "windows" {
		if fi, err := os.Stat(filepath.Join(dir, archived)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("archived certificate mode: %v %v", fi, err)
		}
	}
	st := readState(t, dir)
	if st.Version != 2 || st.Pending != nil || len(st.Issuers) != 2 || st.CRLNumber != 2 {
		t.Errorf("authority.json: version %d pending %v issuers %d CRL number %d", st.Version, st.Pending != nil, len(st.Issuers), st.CRLNumber)
	}
	for name, data := range snapshotTree(t, dir) {
		if bytes.Contains(data, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a key in the clear", name)
		}
	}

	// A restart sees the same.
	b, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	assertSameCA(t, a, b)
	if got, ok := b.IssuerOf(oldDev.cert); !ok || got.State != IssuerGrace {
		t.Errorf("after Load, IssuerOf(old device) = %v %v", got.State, ok)
	}
}

// assertSameCA checks that two handles on one directory agree.
func assertSameCA(t *testing.T, a, b *Authority) {
	t.Helper()
	if !a.Issuing().Equal(b.Issuing()) {
		t.Errorf("current issuer: %s vs %s", a.Issuing().Subject.CommonName, b.Issuing().Subject.CommonName)
	}
	ia, ib := a.Issuers(), b.Issuers()
	if len(ia) != len(ib) {
		t.Fatalf("issuers %v vs %v", fingerprints(ia), fingerprints(ib))
	}
	for i := range ia {
		x, y := ia[i], ib[i]
		if !x.Certificate.Equal(y.Certificate) || x.Fingerprint != y.Fingerprint || x.State != y.State || !x.Created.Equal(y.Created) ||
			!x.GraceUntil.Equal(y.GraceUntil) || !x.RetiredAt.Equal(y.RetiredAt) || !x.RevokedAt.Equal(y.RevokedAt) || x.Reason != y.Reason {
			t.Errorf("issuer %d: %+v vs %+v", i, x, y)
		}
	}
	sa, _ := a.ServerCertificate()
	sb, _ := b.ServerCertificate()
	if !sa.Leaf.Equal(sb.Leaf) {
		t.Error("server certificates differ")
	}
	if !a.ClientCAs().Equal(b.ClientCAs()) {
		t.Error("ClientCAs differ")
	}
}

// snapshotTree reads every file under dir, by slash-separated relative name.
func snapshotTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = data
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestClientCAsFollowIssuerStates(t *testing.T) {
	tests := []struct {
		name  string
		grace time.Duration
		// end stops trusting the old issuer; it returns the state Issuers
		// must then report for it.
		end func(t *testing.T, a *Authority, clk *testClock, oldFP string) string
	}{
		{"RetireIssuer", 0, func(t *testing.T, a *Authority, clk *testClock, oldFP string) string {
			if err := a.RetireIssuer(oldFP); err != nil {
				t.Fatal(err)
			}
			return IssuerRetired
		}},
		{"RevokeIssuer", 0, func(t *testing.T, a *Authority, clk *testClock, oldFP string) string {
			if err := a.RevokeIssuer(oldFP, "key found on a stolen laptop"); err != nil {
				t.Fatal(err)
			}
			return IssuerRevoked
		}},
		{"grace period ends", 24 * time.Hour, func(t *testing.T, a *Authority, clk *testClock, oldFP string) string {
			clk.Add(24*time.Hour - time.Second)
			if pool := a.ClientCAs(); len(pool.Subjects()) != 2 { //nolint:staticcheck // Subjects is fine for our own pool
				t.Fatal("old issuer dropped before its grace period ended")
			}
			clk.Add(time.Second)
			return IssuerRetired
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, dir, ks, clk := newClockCA(t)
			oldFP := Fingerprint(a.Issuing())
			oldDev := issueDevice(t, a, "dev1")
			if _, err := a.Rotate(tt.grace); err != nil {
				t.Fatal(err)
			}
			newDev := issueDevice(t, a, "dev2")

			pool, gen := a.ClientCAs(), a.Generation()
			if a.ClientCAs() != pool || a.Generation() != gen {
				t.Fatal("ClientCAs or Generation changed without a change of trust")
			}
			if !trusts(pool, oldDev.cert, clk.Now()) || !trusts(pool, newDev.cert, clk.Now()) {
				t.Fatal("during grace ClientCAs does not trust both issuers")
			}

			wantState := tt.end(t, a, clk, oldFP)

			pool2 := a.ClientCAs()
			if pool2 == pool || a.Generation() == gen {
				t.Error("ClientCAs/Generation did not change with trust")
			}
			if trusts(pool2, oldDev.cert, clk.Now()) {
				t.Error("old issuer still trusted")
			}
			if !trusts(pool2, newDev.cert, clk.Now()) {
				t.Error("new issuer no longer trusted")
			}
			if err := handshake(t, a, oldDev, clk.Now()); err == nil {
				t.Error("old device still completes a handshake")
			}
			if err := handshake(t, a, newDev, clk.Now()); err != nil {
				t.Errorf("new device handshake: %v", err)
			}
			old := a.Issuers()[1]
			if old.State != wantState {
				t.Errorf("old issuer state %q, want %q", old.State, wantState)
			}
			if info, ok := a.IssuerOf(oldDev.cert); !ok || info.State != wantState {
				t.Errorf("IssuerOf(old device) = %q %v", info.State, ok)
			}
			if wantState == IssuerRevoked && (old.Reason != "key found on a stolen laptop" || !old.RevokedAt.Equal(clk.Now())) {
				t.Errorf("revocation recorded as %+v", old)
			}
			if tt.grace > 0 && !old.RetiredAt.Equal(old.GraceUntil) {
				t.Errorf("expired grace: RetiredAt %v, GraceUntil %v", old.RetiredAt, old.GraceUntil)
			}

			// A restart agrees, and the next write records the end of a
			// grace period as a retirement.
			b, err := Load(dir, ks, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			assertSameCA(t, a, b)
			if _, err := b.SignCRL(nil); err != nil {
				t.Fatal(err)
			}
			if got := readState(t, dir).Issuers[1].State; got != wantState {
				t.Errorf("authority.json records the old issuer as %q, want %q", got, wantState)
			}
		})
	}
}

func TestRotateTwice(t *testing.T) {
	a, dir, ks, clk := newClockCA(t)
	first := Fingerprint(a.Issuing())
	clk.Add(time.Hour)
	if _, err := a.Rotate(30 * 24 * time.Hour); err != nil {
		t.Fatal(err)
	}
	second := Fingerprint(a.Issuing())
	clk.Add(time.Hour)
	if _, err := a.Rotate(0); err != nil {
		t.Fatal(err)
	}
	third := Fingerprint(a.Issuing())

	check := func(t *testing.T, a *Authority) {
		t.Helper()
		got := a.Issuers()
		want := []string{third[:8] + ":current", second[:8] + ":grace", first[:8] + ":grace"}
		if !slices.Equal(fingerprints(got), want) {
			t.Fatalf("Issuers = %v, want %v", fingerprints(got), want)
		}
		if !got[1].GraceUntil.IsZero() {
			t.Errorf("second issuer grace until %v, want none (grace 0)", got[1].GraceUntil)
		}
		if !got[2].GraceUntil.Equal(testNow.Add(time.Hour + 30*24*time.Hour)) {
			t.Errorf("first issuer grace until %v", got[2].GraceUntil)
		}
		for _, i := range got {
			if err := i.Certificate.CheckSignatureFrom(a.Root()); err != nil || Fingerprint(i.Certificate) != i.Fingerprint {
				t.Errorf("issuer %s: certificate does not match (%v)", i.Fingerprint, err)
			}
		}
	}
	check(t, a)
	b, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	check(t, b)
	entries, _ := os.ReadDir(filepath.Join(dir, "issuers"))
	if len(entries) != 2 {
		t.Errorf("issuers/ holds %d files, want 2", len(entries))
	}
	if err := b.RetireIssuer(first); err != nil {
		t.Fatal(err)
	}
	if err := b.RevokeIssuer(second, ""); err != nil {
		t.Fatal(err)
	}
	if got := fingerprints(b.Issuers()); !slices.Equal(got, []string{third[:8] + ":current", second[:8] + ":revoked", first[:8] + ":retired"}) {
		t.Errorf("after retire and revoke: %v", got)
	}
	if n := len(b.ClientCAs().Subjects()); n != 1 { //nolint:staticcheck // Subjects is fine for our own pool
		t.Errorf("ClientCAs holds %d CAs, want 1", n)
	}
}

func TestRotateCapsAtRootExpiry(t *testing.T) {
	a, _, _, clk := newClockCA(t)
	clk.Add(a.Root().NotAfter.Sub(clk.Now()) - 365*24*time.Hour)
	if _, err := a.Rotate(0); err != nil {
		t.Fatal(err)
	}
	if !a.Issuing().NotAfter.Equal(a.Root().NotAfter) {
		t.Errorf("issuing CA ends %v, root %v", a.Issuing().NotAfter, a.Root().NotAfter)
	}
	clk.Add(366 * 24 * time.Hour)
	if _, err := a.Rotate(0); err == nil || !strings.Contains(err.Error(), "root CA expired") {
		t.Errorf("Rotate after the root expired: %v", err)
	}
}

func TestLoadVersion1(t *testing.T) {
	a, dir, ks, clk := newClockCA(t)
	// authority.json as Warden wrote it before rotation existed.
	v1 := fmt.Sprintf(`{
  "version": 1,
  "organization": "Warden",
  "crl_url": %q,
  "crl_number": 1,
  "created": %q
}
`, testCRLURL, testNow.Format(time.RFC3339))
	write(t, dir, "authority.json", []byte(v1))

	b, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	got := b.Issuers()
	if len(got) != 1 || got[0].State != IssuerCurrent || got[0].Fingerprint != Fingerprint(a.Issuing()) || !got[0].Created.Equal(testNow) || !got[0].Certificate.Equal(a.Issuing()) {
		t.Fatalf("Issuers of a version 1 CA: %+v", got)
	}
	if string(read(t, dir, "authority.json")) != v1 {
		t.Fatal("Load rewrote a version 1 authority.json without a change")
	}
	assertSameCA(t, a, b)
	verifyClient(t, b, issueDevice(t, b, "dev1").cert)

	// The first change writes version 2.
	if _, err := b.SignCRL(nil); err != nil {
		t.Fatal(err)
	}
	st := readState(t, dir)
	if st.Version != 2 || st.CRLNumber != 2 || len(st.Issuers) != 1 || st.Issuers[0].Fingerprint != Fingerprint(a.Issuing()) || st.Issuers[0].State != IssuerCurrent {
		t.Fatalf("after the first change: %+v", st)
	}

	// And a version 1 CA rotates.
	write(t, dir, "authority.json", []byte(v1))
	c, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rotate(time.Hour); err != nil {
		t.Fatal(err)
	}
	if st := readState(t, dir); st.Version != 2 || len(st.Issuers) != 2 {
		t.Fatalf("after rotating a version 1 CA: version %d, %d issuers", st.Version, len(st.Issuers))
	}
	d, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	assertSameCA(t, c, d)
}

func TestReloadSeesAnotherHandlesChanges(t *testing.T) {
	a, dir, ks, clk := newClockCA(t)
	cli, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	oldFP := Fingerprint(a.Issuing())
	oldDev := issueDevice(t, a, "dev1")

	gen := a.Generation()
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if a.Generation() != gen {
		t.Error("Reload without a change moved Generation")
	}

	if _, err := cli.Rotate(time.Hour); err != nil {
		t.Fatal(err)
	}
	if a.Issuing().Equal(cli.Issuing()) {
		t.Fatal("the server saw the rotation before Reload")
	}
	// Until it reloads, the server must not write its stale view back.
	before := snapshotTree(t, dir)
	if _, err := a.SignCRL(nil); !errors.Is(err, ErrChangedOnDisk) {
		t.Errorf("SignCRL on a stale handle: %v, want ErrChangedOnDisk", err)
	}
	if err := a.RenewServerCertificate(nil); !errors.Is(err, ErrChangedOnDisk) {
		t.Errorf("RenewServerCertificate on a stale handle: %v, want ErrChangedOnDisk", err)
	}
	if _, err := a.Rotate(0); !errors.Is(err, ErrChangedOnDisk) {
		t.Errorf("Rotate on a stale handle: %v, want ErrChangedOnDisk", err)
	}
	after := snapshotTree(t, dir)
	for name, data := range before {
		if !bytes.Equal(after[name], data) {
			t.Errorf("a refused write changed %s", name)
		}
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if a.Generation() == gen {
		t.Error("Generation unchanged by a Reload that found a rotation")
	}
	assertSameCA(t, a, cli)
	newDev := issueDevice(t, a, "dev2")
	if err := newDev.cert.CheckSignatureFrom(cli.Issuing()); err != nil {
		t.Fatalf("after Reload the server issues with the old issuing CA: %v", err)
	}
	for name, d := range map[string]device{"old": oldDev, "new": newDev} {
		if err := handshake(t, a, d, clk.Now()); err != nil {
			t.Errorf("%s device after Reload: %v", name, err)
		}
	}
	// The server's CRL numbers continue from the file.
	if _, err := cli.SignCRL(nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	der, err := a.SignCRL(nil)
	if err != nil {
		t.Fatal(err)
	}
	if crl, _ := x509.ParseRevocationList(der); crl.Number.Int64() != 3 {
		t.Errorf("CRL number after Reload %v, want 3", crl.Number)
	}

	gen = a.Generation()
	if err := cli.RevokeIssuer(oldFP, "compromised"); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if a.Generation() == gen || trusts(a.ClientCAs(), oldDev.cert, clk.Now()) {
		t.Error("revocation in another handle not picked up by Reload")
	}
	if err := cli.Reload(); err != nil {
		t.Fatal(err)
	}
	assertSameCA(t, a, cli)

	// A directory with another root is refused, and the old state kept.
	other, otherDir, _ := newTestCA(t)
	write(t, dir, "root.crt", read(t, otherDir, "root.crt"))
	if err := a.Reload(); err == nil {
		t.Error("Reload accepted a directory with another root")
	}
	if !a.Root().Equal(cli.Root()) || a.Root().Equal(other.Root()) {
		t.Error("failed Reload changed the root")
	}
	verifyClient(t, a, issueDevice(t, a, "dev3").cert)
}

// TestRotateCrashes stops Rotate before each of its steps, as a kill -9
// would, and checks that Load then finds either the old CA or the new one,
// whole.
func TestRotateCrashes(t *testing.T) {
	// Learn the steps from a rotation that completes, so a new step cannot
	// go untested.
	var steps []string
	{
		a, _, _, _ := newClockCA(t)
		a.crashAt = func(step string) error { steps = append(steps, step); return nil }
		if _, err := a.Rotate(time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{stepArchive, stepCommit, stepIssuingKey, stepIssuingCrt, stepServerKey, stepServerCrt, stepFinish}
	if !slices.Equal(steps, want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	committed := slices.Index(steps, stepCommit) + 1 // crashing before this step leaves the old state

	for i, step := range steps {
		t.Run(step, func(t *testing.T) {
			a, dir, ks, clk := newClockCA(t)
			old := a.Issuing()
			oldDev := issueDevice(t, a, "dev1")
			crash := errors.New("simulated crash")
			a.crashAt = func(s string) error {
				if s == step {
					return crash
				}
				return nil
			}
			if _, err := a.Rotate(time.Hour); !errors.Is(err, crash) {
				t.Fatalf("Rotate: %v, want the simulated crash", err)
			}
			wantNew := i >= committed

			b, err := Load(dir, ks, clk.Now)
			if err != nil {
				t.Fatalf("Load after a crash before %q: %v", step, err)
			}
			if got := !b.Issuing().Equal(old); got != wantNew {
				t.Fatalf("after a crash before %q: new issuer = %v, want %v", step, got, wantNew)
			}
			checkConsistent(t, b, clk.Now())
			if !trusts(b.ClientCAs(), oldDev.cert, clk.Now()) {
				t.Error("old device certificate no longer trusted")
			}
			issuers := b.Issuers()
			if wantNew && (len(issuers) != 2 || issuers[1].State != IssuerGrace || !issuers[1].GraceUntil.Equal(clk.Now().Add(time.Hour))) {
				t.Errorf("issuers after a committed crash: %v", fingerprints(issuers))
			}
			if !wantNew && len(issuers) != 1 {
				t.Errorf("issuers after an uncommitted crash: %v", fingerprints(issuers))
			}
			if st := readState(t, dir); st.Pending != nil {
				t.Error("Load left the pending rotation in authority.json")
			}
			// Loading again changes nothing.
			c, err := Load(dir, ks, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			assertSameCA(t, b, c)

			// The crashed handle refuses to write stale state after a
			// commit, and Reload brings it up to date.
			if wantNew {
				if _, err := a.SignCRL(nil); err == nil || !strings.Contains(err.Error(), "Reload") {
					t.Errorf("SignCRL on a handle behind a committed rotation: %v", err)
				}
			}
			a.crashAt = nil
			if err := a.Reload(); err != nil {
				t.Fatal(err)
			}
			assertSameCA(t, a, b)
			if _, err := a.SignCRL(nil); err != nil {
				t.Errorf("SignCRL after Reload: %v", err)
			}
			// Rotating again works from either state.
			if _, err := c.Rotate(0); err != nil {
				t.Fatalf("Rotate after recovery: %v", err)
			}
			d, err := Load(dir, ks, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, d, clk.Now())
			if got := len(d.Issuers()); got != len(issuers)+1 {
				t.Errorf("%d issuers after rotating again, want %d", got, len(issuers)+1)
			}
		})
	}
}

// checkConsistent checks that a loaded CA works as a whole: the server
// certificate chains to the current issuer, which issues devices that
// ClientCAs trusts and that complete a handshake.
func checkConsistent(t *testing.T, a *Authority, now time.Time) {
	t.Helper()
	cur := a.Issuing()
	if err := cur.CheckSignatureFrom(a.Root()); err != nil {
		t.Fatalf("current issuer not signed by the root: %v", err)
	}
	sc, err := a.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Leaf.CheckSignatureFrom(cur); err != nil || len(sc.Certificate) != 2 || !bytes.Equal(sc.Certificate[1], cur.Raw) {
		t.Fatalf("server certificate does not chain to the current issuer: %v", err)
	}
	if !sc.PrivateKey.(*ecdsa.PrivateKey).PublicKey.Equal(sc.Leaf.PublicKey) {
		t.Fatal("server key does not match its certificate")
	}
	if i := a.Issuers(); len(i) == 0 || i[0].State != IssuerCurrent || !i[0].Certificate.Equal(cur) {
		t.Fatalf("Issuers()[0] is not the current issuer: %v", fingerprints(i))
	}
	dev := issueDevice(t, a, "dev9")
	if err := dev.cert.CheckSignatureFrom(cur); err != nil {
		t.Fatalf("device not issued by the current issuer: %v", err)
	}
	if !trusts(a.ClientCAs(), dev.cert, now) {
		t.Fatal("ClientCAs does not trust the current issuer")
	}
	if err := handshake(t, a, dev, now); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	der, err := a.CurrentCRL()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParseRevocationList(der); err != nil {
		t.Fatal(err)
	}
}

func TestRotateNeedsRootKey(t *testing.T) {
	t.Parallel()
	a, dir, _, _ := newClockCA(t)
	pass := []byte("a long enough passphrase")
	exported, err := a.ExportRootKey(pass)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveRootKey(); err != nil {
		t.Fatal(err)
	}
	before := snapshotTree(t, dir)
	_, err = a.Rotate(time.Hour)
	if !errors.Is(err, ErrNoRootKey) || !strings.Contains(err.Error(), "ImportRootKey") {
		t.Fatalf("Rotate without the root key: %v, want ErrNoRootKey saying to import it", err)
	}
	after := snapshotTree(t, dir)
	if len(after) != len(before) {
		t.Fatalf("a refused rotation changed the directory: %d files -> %d", len(before), len(after))
	}

	// Another installation's root key is refused.
	other, _, _ := newTestCA(t)
	foreign, err := other.ExportRootKey(pass)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.ImportRootKey(foreign, pass); err == nil || !strings.Contains(err.Error(), "not the key of this CA's root") {
		t.Fatalf("ImportRootKey of a foreign key: %v", err)
	}
	if a.HasRootKey() {
		t.Fatal("a foreign root key was stored")
	}
	if err := a.ImportRootKey(exported, []byte("the wrong passphrase")); !errors.Is(err, keystore.ErrWrongPassphrase) {
		t.Fatalf("ImportRootKey with the wrong passphrase: %v", err)
	}
	if err := a.ImportRootKey([]byte("garbage"), pass); err == nil {
		t.Fatal("ImportRootKey accepted garbage")
	}

	if err := a.ImportRootKey(exported, pass); err != nil {
		t.Fatal(err)
	}
	if !a.HasRootKey() {
		t.Fatal("HasRootKey false after ImportRootKey")
	}
	if runtime.GOOS != "windows" {
		if fi, err := os.Stat(filepath.Join(dir, "root.key.sealed")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("imported root key mode: %v %v", fi, err)
		}
	}
	if _, err := a.Rotate(time.Hour); err != nil {
		t.Fatalf("Rotate after ImportRootKey: %v", err)
	}
	if len(a.Issuers()) != 2 {
		t.Fatal("rotation after import did not take")
	}
}

func TestRetireRevokeRefusals(t *testing.T) {
	a, _, _, clk := newClockCA(t)
	if _, err := a.Rotate(0); err != nil {
		t.Fatal(err)
	}
	cur, old := a.Issuers()[0].Fingerprint, a.Issuers()[1].Fingerprint
	openssl := func(fp string) string {
		var parts []string
		for i := 0; i < len(fp); i += 2 {
			parts = append(parts, strings.ToUpper(fp[i:i+2]))
		}
		return "sha256 Fingerprint=" + strings.Join(parts, ":")
	}

	tests := []struct {
		name    string
		op      func() error
		wantErr string // "" for success
		is      error
	}{
		{"retire current", func() error { return a.RetireIssuer(cur) }, "rotate first", nil},
		{"revoke current", func() error { return a.RevokeIssuer(cur, "x") }, "rotate first", nil},
		{"retire unknown", func() error { return a.RetireIssuer(strings.Repeat("ab", 32)) }, "no such issuing CA", ErrUnknownIssuer},
		{"revoke unknown", func() error { return a.RevokeIssuer(strings.Repeat("ab", 32), "") }, "no such issuing CA", ErrUnknownIssuer},
		{"short fingerprint", func() error { return a.RetireIssuer(old[:16]) }, "give all 64", nil},
		{"not a fingerprint", func() error { return a.RetireIssuer("xyz") }, "not a SHA-256 fingerprint", nil},
		{"reason with newline", func() error { return a.RevokeIssuer(old, "a\nb") }, "control character", nil},
		{"reason too long", func() error { return a.RevokeIssuer(old, strings.Repeat("x", 257)) }, "at most 256", nil},
		{"retire in OpenSSL form", func() error { return a.RetireIssuer(openssl(old)) }, "", nil},
		{"retire retired", func() error { return a.RetireIssuer(old) }, "", nil},
		{"revoke retired", func() error { return a.RevokeIssuer(old, "  leaked  ") }, "", nil},
		{"revoke revoked", func() error { return a.RevokeIssuer(old, "again") }, "", nil},
		{"retire revoked", func() error { return a.RetireIssuer(old) }, "final", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("error %v does not wrap %v", err, tt.is)
			}
		})
	}
	got := a.Issuers()
	if got[0].State != IssuerCurrent || got[1].State != IssuerRevoked || got[1].Reason != "leaked" || !got[1].RetiredAt.Equal(clk.Now()) || !got[1].RevokedAt.Equal(clk.Now()) {
		t.Errorf("final states %+v", got)
	}
}

func TestLoadRotatedFailures(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir, oldFP string)
		wantErr string
	}{
		{"archived issuer missing", func(t *testing.T, dir, oldFP string) {
			remove(t, dir, filepath.Join("issuers", oldFP+".crt"))
		}, "issuers/" + "%s.crt is missing"},
		{"archived issuer replaced", func(t *testing.T, dir, oldFP string) {
			copyFile(t, dir, "issuing.crt", filepath.Join("issuers", oldFP+".crt"))
		}, "not the one its name says"},
		{"issuing.crt is an old issuer", func(t *testing.T, dir, oldFP string) {
			write(t, dir, "issuing.crt", read(t, dir, filepath.Join("issuers", oldFP+".crt")))
		}, "issuing.key.sealed does not hold the key"},
		{"current record names another issuer", func(t *testing.T, dir, oldFP string) {
			st := readState(t, dir)
			st.Issuers[0].Fingerprint = strings.Repeat("0", 64)
			data, _ := json.Marshal(st)
			write(t, dir, "authority.json", data)
		}, "names " + strings.Repeat("0", 64) + " as the current one"},
		{"pending switch with a foreign certificate", func(t *testing.T, dir, oldFP string) {
			other, _, _ := newTestCA(t)
			st := readState(t, dir)
			st.Pending = &pendingSwitch{IssuingCert: certPEM(other.Issuing()), IssuingKeySealed: []byte{1}, ServerCert: []byte{1}, ServerKeySealed: []byte{1}}
			data, _ := json.Marshal(st)
			write(t, dir, "authority.json", data)
		}, "pending issuing CA certificate is not signed by root.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, dir, ks, clk := newClockCA(t)
			oldFP := Fingerprint(a.Issuing())
			if _, err := a.Rotate(0); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, dir, oldFP)
			before := snapshotTree(t, dir)
			_, err := Load(dir, ks, clk.Now)
			want := tt.wantErr
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, oldFP)
			}
			if err == nil || !strings.Contains(filepath.ToSlash(err.Error()), want) {
				t.Fatalf("Load: %v, want an error containing %q", err, want)
			}
			after := snapshotTree(t, dir)
			for name, data := range before {
				if !bytes.Equal(after[name], data) {
					t.Errorf("a failed Load changed %s", name)
				}
			}
		})
	}
}

// TestConcurrentUse runs issuance, handshake-time calls and listings while
// the CA rotates, retires and reloads; run with -race.
func TestConcurrentUse(t *testing.T) {
	a, dir, ks, clk := newClockCA(t)
	cli, err := Load(dir, ks, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	_, csr := newCSR(t, "dev1")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cert, err := a.IssueDevice(csr, "dev1", time.Hour)
				if err != nil {
					errs <- err
					return
				}
				if _, ok := a.IssuerOf(cert); !ok {
					errs <- errors.New("IssuerOf does not know a certificate just issued")
					return
				}
				_ = a.ClientCAs()
				_ = a.Generation()
				_ = a.Issuers()
				if _, err := a.ServerCertificate(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 3 {
		if _, err := a.Rotate(time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := cli.Reload(); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Rotate(0); err != nil {
			t.Fatal(err)
		}
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
		if err := a.RetireIssuer(a.Issuers()[1].Fingerprint); err != nil {
			t.Fatal(err)
		}
		if _, err := a.SignCRL(nil); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Minute)
		if err := cli.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assertSameCA(t, a, cli)
	if got := len(a.Issuers()); got != 7 {
		t.Errorf("%d issuers after 6 rotations, want 7", got)
	}
}
