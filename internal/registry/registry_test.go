package registry

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// clock is a settable clock shared by the CA and the registry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the JSON log records written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

type fixture struct {
	reg    *Registry
	st     *sqlite.Store
	dbPath string
	ks     *keystore.Keystore
	ca     *pki.Authority
	clock  *clock
	logs   *syncBuffer
	mu     sync.Mutex
	events []Event
}

type fixtureOptions struct {
	deviceLifetime time.Duration
	issuer         func(*pki.Authority) Issuer // wraps the real CA
}

func newFixture(t testing.TB, o fixtureOptions) *fixture {
	t.Helper()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	if _, err := rand.Read(master); err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now().UTC()}
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{Now: clk.Now})
	if err != nil {
		t.Fatalf("pki.Init: %v", err)
	}
	dbPath := filepath.Join(dir, "warden.db")
	st, err := sqlite.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var issuer Issuer = ca
	if o.issuer != nil {
		issuer = o.issuer(ca)
	}
	f := &fixture{st: st, dbPath: dbPath, ks: ks, ca: ca, clock: clk, logs: &syncBuffer{}}
	f.reg = New(st, issuer, Options{
		Logger:             slog.New(slog.NewJSONHandler(f.logs, nil)),
		Now:                clk.Now,
		DeviceCertLifetime: o.deviceLifetime,
		Sealer:             ks,
	})
	f.reg.Subscribe(func(e Event) {
		f.mu.Lock()
		f.events = append(f.events, e)
		f.mu.Unlock()
	})
	return f
}

func (f *fixture) eventsOf(kind EventKind, id string) []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Event
	for _, e := range f.events {
		if e.Kind == kind && e.Principal.ID == id {
			out = append(out, e)
		}
	}
	return out
}

func csrFor(t testing.TB, cn string) []byte {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.CreateCSR(key, cn)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (f *fixture) addDevice(t *testing.T, id string, tags map[string]string) (store.Device, *x509.Certificate) {
	t.Helper()
	d, cert, err := f.reg.AddDevice(context.Background(), DeviceSpec{ID: id, Model: "sensor-v1", Tags: tags}, csrFor(t, id))
	if err != nil {
		t.Fatalf("AddDevice(%q): %v", id, err)
	}
	return d, cert
}

// wantRefusal checks that Authenticate refuses cert with reason.
func (f *fixture) wantRefusal(t *testing.T, cert *x509.Certificate, reason string) {
	t.Helper()
	p, err := f.reg.Authenticate(context.Background(), cert)
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("Authenticate = %v, %v; want an AuthError %q", p, err, reason)
	}
	if ae.Reason != reason {
		t.Fatalf("Authenticate refused with %q (%v), want %q", ae.Reason, ae, reason)
	}
	if p != (identity.Principal{}) {
		t.Errorf("refused Authenticate returned principal %v", p)
	}
}

func (f *fixture) wantAccepted(t *testing.T, cert *x509.Certificate, want identity.Principal) {
	t.Helper()
	p, err := f.reg.Authenticate(context.Background(), cert)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	if p != want {
		t.Fatalf("Authenticate = %v, want %v", p, want)
	}
}

// forge makes a self-signed certificate with the given serial and URIs;
// Authenticate is given TLS-verified leaves, so the issuer does not matter
// to it and a forged leaf stands for "a certificate some CA issued".
func forge(t *testing.T, serial *big.Int, uris []*url.URL, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "forged"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		URIs:         uris,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestAddShowList(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	added := map[string]*x509.Certificate{}
	for _, tc := range []struct {
		id   string
		tags map[string]string
	}{
		{"0badf00d", map[string]string{"site": "lyon", "floor": "1"}},
		{"dev-2", map[string]string{"site": "lyon"}},
		{"Dev_3", nil},
	} {
		d, cert := f.addDevice(t, tc.id, tc.tags)
		added[tc.id] = cert
		if d.ID != tc.id || d.State != store.StateActive || d.Model != "sensor-v1" || len(d.Tags) != len(tc.tags) {
			t.Errorf("AddDevice returned %+v", d)
		}
		if k, id, err := identity.FromURIs(cert.URIs); err != nil || k != identity.KindDevice || id != tc.id {
			t.Errorf("certificate names %v %v %v", k, id, err)
		}
		if cert.Subject.CommonName != tc.id {
			t.Errorf("certificate CN %q", cert.Subject.CommonName)
		}
		// What AddDevice returned is what the store holds.
		info, err := f.reg.Device(ctx, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if !info.CreatedAt.Equal(d.CreatedAt) || !info.UpdatedAt.Equal(d.UpdatedAt) || info.State != d.State || len(info.Tags) != len(d.Tags) {
			t.Errorf("Device = %+v, AddDevice returned %+v", info.Device, d)
		}
		if len(info.Credentials) != 1 {
			t.Fatalf("Device has %d credentials, want 1", len(info.Credentials))
		}
		c := info.Credentials[0]
		if c.Serial != pki.SerialHex(cert.SerialNumber) || c.Fingerprint != pki.Fingerprint(cert) ||
			!bytes.Equal(c.Certificate, cert.Raw) || len(c.CSR) == 0 || c.Revoked() {
			t.Errorf("stored credential %+v does not match the certificate", c)
		}
		if _, err := x509.ParseCertificateRequest(c.CSR); err != nil {
			t.Errorf("stored CSR does not parse: %v", err)
		}
		f.wantAccepted(t, cert, identity.Principal{Kind: identity.KindDevice, ID: tc.id})
		if n := len(f.eventsOf(EventDeviceAdded, tc.id)); n != 1 {
			t.Errorf("%d device-added events for %s, want 1", n, tc.id)
		}
		if ok, err := f.reg.DeviceExists(ctx, tc.id); !ok || err != nil {
			t.Errorf("DeviceExists(%s) = %v, %v", tc.id, ok, err)
		}
	}
	if ok, err := f.reg.DeviceExists(ctx, "nope"); ok || err != nil {
		t.Errorf("DeviceExists(nope) = %v, %v", ok, err)
	}

	ds, err := f.reg.ListDevices(ctx, store.DeviceFilter{Tags: map[string]string{"site": "lyon"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.ID)
	}
	if !slices.Equal(got, []string{"0badf00d", "dev-2"}) {
		t.Errorf("ListDevices(site=lyon) = %v", got)
	}
	if _, err := f.reg.ListDevices(ctx, store.DeviceFilter{State: "bogus"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ListDevices(bad state) = %v, want ErrInvalid", err)
	}
	if _, err := f.reg.Device(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Device(nope) = %v, want ErrNotFound", err)
	}

	// A PEM CSR is accepted as well as DER.
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrFor(t, "pem-dev")})
	if _, _, err := f.reg.AddDevice(ctx, DeviceSpec{ID: "pem-dev"}, pemCSR); err != nil {
		t.Errorf("AddDevice(PEM CSR): %v", err)
	}
}

// snapshot captures what the store holds, to check that a refused call
// changed nothing.
func (f *fixture) snapshot(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	ds, err := f.st.ListDevices(ctx, store.DeviceFilter{Limit: store.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, d := range ds {
		cs, err := f.st.Credentials(ctx, identity.KindDevice, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(d.ID + " " + string(d.State) + " " + d.Model)
		for k, v := range d.Tags {
			b.WriteString(" " + k + "=" + v)
		}
		for _, c := range cs {
			b.WriteString(" " + c.Serial)
		}
		b.WriteString("\n")
	}
	ss, err := f.st.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		b.WriteString("service " + s.Name + "\n")
	}
	return b.String()
}

func TestAddDeviceRefusals(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "existing", map[string]string{"a": "b"})

	long := strings.Repeat("x", MaxTagValueLen+1)
	for _, tc := range []struct {
		name string
		spec DeviceSpec
		csr  []byte
		is   error
	}{
		{"duplicate ID", DeviceSpec{ID: "existing", Model: "other"}, csrFor(t, "existing"), store.ErrConflict},
		{"CSR names another device", DeviceSpec{ID: "new-1"}, csrFor(t, "new-2"), ErrInvalid},
		{"invalid ID", DeviceSpec{ID: "bad/id"}, csrFor(t, "bad/id"), identity.ErrInvalidID},
		{"empty ID", DeviceSpec{ID: ""}, csrFor(t, ""), ErrInvalid},
		{"tag key with capitals", DeviceSpec{ID: "new-1", Tags: map[string]string{"Site": "x"}}, csrFor(t, "new-1"), ErrInvalid},
		{"tag value too long", DeviceSpec{ID: "new-1", Tags: map[string]string{"site": long}}, csrFor(t, "new-1"), ErrInvalid},
		{"control character in model", DeviceSpec{ID: "new-1", Model: "a\nb"}, csrFor(t, "new-1"), ErrInvalid},
		{"garbage CSR", DeviceSpec{ID: "new-1"}, []byte("not a csr"), ErrInvalid},
		{"empty CSR", DeviceSpec{ID: "new-1"}, nil, ErrInvalid},
		{"CSR with broken signature", DeviceSpec{ID: "new-1"}, func() []byte {
			b := csrFor(t, "new-1")
			b[len(b)-3] ^= 0xff
			return b
		}(), ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.snapshot(t)
			d, cert, err := f.reg.AddDevice(ctx, tc.spec, tc.csr)
			if err == nil {
				t.Fatalf("AddDevice accepted: %+v", d)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("AddDevice = %v, want errors.Is %v", err, tc.is)
			}
			if cert != nil {
				t.Error("a certificate was returned with an error")
			}
			if after := f.snapshot(t); after != before {
				t.Errorf("store changed:\nbefore %s\nafter  %s", before, after)
			}
			if _, err := f.reg.IssueDevice(ctx, tc.spec, tc.csr); !errors.Is(err, tc.is) {
				t.Errorf("IssueDevice = %v, want errors.Is %v", err, tc.is)
			}
		})
	}
	if n := len(f.eventsOf(EventDeviceAdded, "existing")); n != 1 {
		t.Errorf("%d device-added events, want 1", n)
	}
}

func TestIssueThenRegister(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	spec := DeviceSpec{ID: "prov-1", Model: "m", Tags: map[string]string{"batch": "7"}}
	csr := csrFor(t, spec.ID)
	cert, err := f.reg.IssueDevice(ctx, spec, csr)
	if err != nil {
		t.Fatal(err)
	}
	// Issued but not registered: unknown, and it cannot connect.
	if ok, _ := f.reg.DeviceExists(ctx, spec.ID); ok {
		t.Fatal("IssueDevice registered the device")
	}
	f.wantRefusal(t, cert, ReasonUnknownCredential)

	// The certificate must belong to this CSR and this device.
	otherCert, err := f.reg.IssueDevice(ctx, DeviceSpec{ID: "prov-2"}, csrFor(t, "prov-2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.RegisterDevice(ctx, spec, csr, otherCert); !errors.Is(err, ErrInvalid) {
		t.Errorf("RegisterDevice(another device's certificate) = %v, want ErrInvalid", err)
	}
	sameNameOtherKey, err := f.reg.IssueDevice(ctx, spec, csrFor(t, spec.ID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.RegisterDevice(ctx, spec, csr, sameNameOtherKey); !errors.Is(err, ErrInvalid) {
		t.Errorf("RegisterDevice(certificate for another key) = %v, want ErrInvalid", err)
	}
	if _, err := f.reg.RegisterDevice(ctx, spec, csr, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("RegisterDevice(nil certificate) = %v, want ErrInvalid", err)
	}
	if ok, _ := f.reg.DeviceExists(ctx, spec.ID); ok {
		t.Fatal("a refused RegisterDevice stored the device")
	}

	d, err := f.reg.RegisterDevice(ctx, spec, csr, cert)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != spec.ID || d.Tags["batch"] != "7" {
		t.Errorf("RegisterDevice = %+v", d)
	}
	f.wantAccepted(t, cert, identity.Principal{Kind: identity.KindDevice, ID: spec.ID})
	// The losing certificate for the same name stays unknown.
	f.wantRefusal(t, sameNameOtherKey, ReasonUnknownCredential)
	if _, err := f.reg.RegisterDevice(ctx, spec, csr, cert); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second RegisterDevice = %v, want ErrConflict", err)
	}
}

func TestDisableEnable(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	_, cert := f.addDevice(t, "dev-1", nil)
	dev := identity.Principal{Kind: identity.KindDevice, ID: "dev-1"}
	f.wantAccepted(t, cert, dev)

	d, err := f.reg.Disable(ctx, "dev-1", "maintenance")
	if err != nil {
		t.Fatal(err)
	}
	if d.State != store.StateDisabled || d.StateReason != "maintenance" {
		t.Errorf("Disable = %+v", d)
	}
	f.wantRefusal(t, cert, ReasonDeviceDisabled)
	if _, err := f.reg.Disable(ctx, "dev-1", "again"); err != nil {
		t.Errorf("second Disable: %v", err)
	}
	evs := f.eventsOf(EventDeviceDisabled, "dev-1")
	if len(evs) != 1 || evs[0].Reason != "maintenance" || evs[0].Principal != dev || evs[0].At.IsZero() {
		t.Errorf("device-disabled events = %+v, want one with the reason", evs)
	}

	d, err = f.reg.Enable(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.State != store.StateActive || d.StateReason != "" {
		t.Errorf("Enable = %+v", d)
	}
	f.wantAccepted(t, cert, dev)
	if _, err := f.reg.Enable(ctx, "dev-1"); err != nil {
		t.Errorf("second Enable: %v", err)
	}
	if n := len(f.eventsOf(EventDeviceEnabled, "dev-1")); n != 1 {
		t.Errorf("%d device-enabled events, want 1", n)
	}

	for _, fn := range []func() error{
		func() error { _, err := f.reg.Disable(ctx, "missing", ""); return err },
		func() error { _, err := f.reg.Enable(ctx, "missing"); return err },
		func() error { _, err := f.reg.Revoke(ctx, "missing", ""); return err },
		func() error { _, err := f.reg.RevokeService(ctx, "missing", ""); return err },
	} {
		if err := fn(); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("change of a missing principal = %v, want ErrNotFound", err)
		}
	}
	if _, err := f.reg.Disable(ctx, "dev-1", strings.Repeat("r", MaxReasonLen+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Disable(huge reason) = %v, want ErrInvalid", err)
	}
}

// parseCRL reads and verifies the CA's current CRL.
func (f *fixture) crl(t *testing.T, der []byte) *x509.RevocationList {
	t.Helper()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(f.ca.Issuing()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	return crl
}

func crlEntry(crl *x509.RevocationList, serial *big.Int) (x509.RevocationListEntry, bool) {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return e, true
		}
	}
	return x509.RevocationListEntry{}, false
}

func TestRevoke(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	_, cert := f.addDevice(t, "dev-1", nil)
	_, other := f.addDevice(t, "dev-2", nil)

	d, err := f.reg.Revoke(ctx, "dev-1", "stolen")
	if err != nil {
		t.Fatal(err)
	}
	if d.State != store.StateRevoked || d.StateReason != "stolen" {
		t.Errorf("Revoke = %+v", d)
	}
	p, err := f.reg.Authenticate(ctx, cert)
	var ae *AuthError
	if !errors.As(err, &ae) || (ae.Reason != ReasonCredentialRevoked && ae.Reason != ReasonDeviceRevoked) {
		t.Fatalf("Authenticate(revoked) = %v, %v", p, err)
	}
	if ae.Principal.ID != "dev-1" || !strings.Contains(ae.Error(), "dev-1") {
		t.Errorf("AuthError does not name the device: %v", ae)
	}
	f.wantAccepted(t, other, identity.Principal{Kind: identity.KindDevice, ID: "dev-2"})

	der, err := f.ca.CurrentCRL()
	if err != nil {
		t.Fatal(err)
	}
	crl := f.crl(t, der)
	e, ok := crlEntry(crl, cert.SerialNumber)
	if !ok {
		t.Fatalf("CRL does not list serial %s", pki.SerialHex(cert.SerialNumber))
	}
	if e.ReasonCode != 1 { // keyCompromise
		t.Errorf("CRL reason code %d, want 1 (keyCompromise) for \"stolen\"", e.ReasonCode)
	}
	if _, ok := crlEntry(crl, other.SerialNumber); ok {
		t.Error("CRL lists a device that was not revoked")
	}

	// Idempotent, and announced once.
	d, err = f.reg.Revoke(ctx, "dev-1", "again")
	if err != nil || d.State != store.StateRevoked || d.StateReason != "stolen" {
		t.Errorf("second Revoke = %+v, %v", d, err)
	}
	evs := f.eventsOf(EventDeviceRevoked, "dev-1")
	if len(evs) != 1 || evs[0].Reason != "stolen" {
		t.Errorf("device-revoked events = %+v, want exactly one", evs)
	}

	// Revoked is final.
	for name, fn := range map[string]func() error{
		"Enable":  func() error { _, err := f.reg.Enable(ctx, "dev-1"); return err },
		"Disable": func() error { _, err := f.reg.Disable(ctx, "dev-1", "x"); return err },
	} {
		err := fn()
		if !errors.Is(err, store.ErrRevoked) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("%s after revoke = %v, want a clear ErrRevoked", name, err)
		}
	}
	if got, err := f.reg.Device(ctx, "dev-1"); err != nil || got.State != store.StateRevoked || !got.Credentials[0].Revoked() {
		t.Errorf("after refused Enable: %+v, %v", got, err)
	}
	if n := len(f.eventsOf(EventDeviceEnabled, "dev-1")); n != 0 {
		t.Errorf("%d device-enabled events after revoke", n)
	}

	// RefreshCRL re-signs the same list with a new number.
	der2, err := f.reg.RefreshCRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crl2 := f.crl(t, der2)
	if crl2.Number.Cmp(crl.Number) <= 0 {
		t.Errorf("CRL number %v did not advance past %v", crl2.Number, crl.Number)
	}
	if _, ok := crlEntry(crl2, cert.SerialNumber); !ok {
		t.Error("refreshed CRL lost the revoked serial")
	}
}

func TestRevokeSurvivesCRLFailure(t *testing.T) {
	fail := &failingCRL{}
	f := newFixture(t, fixtureOptions{issuer: func(a *pki.Authority) Issuer { fail.Authority = a; return fail }})
	ctx := context.Background()
	_, cert := f.addDevice(t, "dev-1", nil)
	fail.fail = true
	d, err := f.reg.Revoke(ctx, "dev-1", "lost")
	if err == nil || !strings.Contains(err.Error(), "CRL") {
		t.Fatalf("Revoke with a failing CRL = %v, want an error about the CRL", err)
	}
	if d.State != store.StateRevoked {
		t.Errorf("device not revoked: %+v", d)
	}
	f.wantRefusal(t, cert, ReasonCredentialRevoked)
	if n := len(f.eventsOf(EventDeviceRevoked, "dev-1")); n != 1 {
		t.Errorf("%d device-revoked events, want 1: the broker must cut connections even if the CRL failed", n)
	}
	fail.fail = false
	der, err := f.reg.RefreshCRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := crlEntry(f.crl(t, der), cert.SerialNumber); !ok {
		t.Error("retried CRL does not list the serial")
	}
}

type failingCRL struct {
	*pki.Authority
	fail bool
}

func (c *failingCRL) SignCRL(revoked []x509.RevocationListEntry) ([]byte, error) {
	if c.fail {
		return nil, errors.New("disk full")
	}
	return c.Authority.SignCRL(revoked)
}

func TestAuthenticateRefusals(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	_, devCert := f.addDevice(t, "dev-1", nil)
	now := f.clock.Now()
	yearLater := now.Add(365 * 24 * time.Hour)

	// Issued by our CA but never registered.
	csr, err := pki.ParseCSR(csrFor(t, "ghost"))
	if err != nil {
		t.Fatal(err)
	}
	unregistered, err := f.ca.IssueDevice(csr, "ghost", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	twoIDs := []*url.URL{identity.URI(identity.KindDevice, "a"), identity.URI(identity.KindDevice, "b")}
	for _, tc := range []struct {
		name   string
		cert   *x509.Certificate
		reason string
	}{
		{"nil certificate", nil, ReasonNoIdentity},
		{"no URI SAN", forge(t, big.NewInt(7), nil, now, yearLater), ReasonNoIdentity},
		{"two identities", forge(t, big.NewInt(7), twoIDs, now, yearLater), ReasonNoIdentity},
		{"unregistered serial from our CA", unregistered, ReasonUnknownCredential},
		{"service certificate with a device's serial",
			forge(t, devCert.SerialNumber, []*url.URL{identity.URI(identity.KindService, "dev-1")}, now, yearLater),
			ReasonCredentialMismatch},
		{"another device with this device's serial",
			forge(t, devCert.SerialNumber, []*url.URL{identity.URI(identity.KindDevice, "dev-2")}, now, yearLater),
			ReasonCredentialMismatch},
		{"same identity and serial, another certificate",
			forge(t, devCert.SerialNumber, []*url.URL{identity.URI(identity.KindDevice, "dev-1")}, now, yearLater),
			ReasonCredentialMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.wantRefusal(t, tc.cert, tc.reason)
		})
	}
	// The real certificate still works.
	f.wantAccepted(t, devCert, identity.Principal{Kind: identity.KindDevice, ID: "dev-1"})

	// Authenticate reports store failures as errors, not refusals.
	f.st.Close()
	_, err = f.reg.Authenticate(ctx, devCert)
	var ae *AuthError
	if err == nil || errors.As(err, &ae) {
		t.Errorf("Authenticate with the store closed = %v, want a non-AuthError error", err)
	}
}

func TestAuthenticateExpired(t *testing.T) {
	f := newFixture(t, fixtureOptions{deviceLifetime: time.Hour})
	_, cert := f.addDevice(t, "dev-1", nil)
	start := f.clock.Now()
	dev := identity.Principal{Kind: identity.KindDevice, ID: "dev-1"}
	for _, tc := range []struct {
		name   string
		at     time.Time
		reason string // "" means accepted
	}{
		{"just issued", start, ""},
		{"before NotBefore", cert.NotBefore.Add(-time.Second), ReasonExpired},
		{"at NotAfter", cert.NotAfter, ""},
		{"after NotAfter", cert.NotAfter.Add(time.Second), ReasonExpired},
		{"long after", start.Add(24 * time.Hour), ReasonExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.clock.Set(tc.at)
			if tc.reason == "" {
				f.wantAccepted(t, cert, dev)
			} else {
				f.wantRefusal(t, cert, tc.reason)
			}
		})
	}
}

func TestServices(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	sv, cert, err := f.reg.AddService(ctx, "billing", identity.RoleCommander, csrFor(t, "billing"))
	if err != nil {
		t.Fatal(err)
	}
	if sv.Name != "billing" || sv.Role != identity.RoleCommander || sv.State != store.StateActive {
		t.Errorf("AddService = %+v", sv)
	}
	want := identity.Principal{Kind: identity.KindService, ID: "billing", Role: identity.RoleCommander}
	f.wantAccepted(t, cert, want)
	if evs := f.eventsOf(EventServiceAdded, "billing"); len(evs) != 1 || evs[0].Principal != want {
		t.Errorf("service-added events = %+v", evs)
	}

	before := f.snapshot(t)
	for _, tc := range []struct {
		name, svc, role, cn string
		is                  error
	}{
		{"duplicate", "billing", identity.RoleReader, "billing", store.ErrConflict},
		{"bad role", "reports", "admin", "reports", ErrInvalid},
		{"bad name", "a/b", identity.RoleReader, "a/b", ErrInvalid},
		{"CSR names another service", "reports", identity.RoleReader, "billing", ErrInvalid},
	} {
		if _, _, err := f.reg.AddService(ctx, tc.svc, tc.role, csrFor(t, tc.cn)); !errors.Is(err, tc.is) {
			t.Errorf("AddService(%s) = %v, want %v", tc.name, err, tc.is)
		}
	}
	if after := f.snapshot(t); after != before {
		t.Errorf("refused AddService changed the store:\n%s\n%s", before, after)
	}

	ss, err := f.reg.ListServices(ctx)
	if err != nil || len(ss) != 1 || ss[0].Name != "billing" {
		t.Errorf("ListServices = %+v, %v", ss, err)
	}

	rs, err := f.reg.RevokeService(ctx, "billing", "retired")
	if err != nil {
		t.Fatal(err)
	}
	if rs.State != store.StateRevoked {
		t.Errorf("RevokeService = %+v", rs)
	}
	f.wantRefusal(t, cert, ReasonCredentialRevoked)
	if _, err := f.reg.RevokeService(ctx, "billing", "again"); err != nil {
		t.Errorf("second RevokeService: %v", err)
	}
	if evs := f.eventsOf(EventServiceRevoked, "billing"); len(evs) != 1 || evs[0].Principal != want {
		t.Errorf("service-revoked events = %+v, want one", evs)
	}
	der, err := f.ca.CurrentCRL()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := crlEntry(f.crl(t, der), cert.SerialNumber)
	if !ok || e.ReasonCode != 5 {
		t.Errorf("CRL entry for the service: %+v, %v; want reason 5 (cessationOfOperation)", e, ok)
	}
}

// Every state change logs one line naming the principal, the event and
// the reason.
func TestChangesAreLogged(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	if _, _, err := f.reg.AddService(ctx, "svc", identity.RoleReader, csrFor(t, "svc")); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		do     func() error
		key    string
		event  EventKind
		reason string
	}{
		{func() error { _, err := f.reg.Disable(ctx, "dev-1", "battery"); return err }, "device", EventDeviceDisabled, "battery"},
		{func() error { _, err := f.reg.Enable(ctx, "dev-1"); return err }, "device", EventDeviceEnabled, ""},
		{func() error { _, err := f.reg.Revoke(ctx, "dev-1", "lost"); return err }, "device", EventDeviceRevoked, "lost"},
		{func() error { _, err := f.reg.RevokeService(ctx, "svc", "gone"); return err }, "service", EventServiceRevoked, "gone"},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatal(err)
		}
	}
	count := map[EventKind]int{}
	for _, l := range f.logs.lines(t) {
		ev, _ := l["event"].(string)
		if ev == "" {
			continue
		}
		count[EventKind(ev)]++
		for _, s := range steps {
			if EventKind(ev) == s.event {
				if l[s.key] == nil || l["reason"] != s.reason {
					t.Errorf("log line for %s: %v", ev, l)
				}
			}
		}
	}
	for _, kind := range []EventKind{EventDeviceAdded, EventServiceAdded, EventDeviceDisabled, EventDeviceEnabled, EventDeviceRevoked, EventServiceRevoked} {
		if count[kind] != 1 {
			t.Errorf("%d log lines for %s, want 1", count[kind], kind)
		}
	}
}

func TestSubscribe(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	var mu sync.Mutex
	var got []EventKind
	unsub := f.reg.Subscribe(func(e Event) {
		mu.Lock()
		got = append(got, e.Kind)
		mu.Unlock()
	})
	f.addDevice(t, "dev-1", nil)
	if _, err := f.reg.Disable(ctx, "dev-1", ""); err != nil {
		t.Fatal(err)
	}
	unsub()
	unsub() // harmless
	if _, err := f.reg.Enable(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []EventKind{EventDeviceAdded, EventDeviceDisabled}) {
		t.Errorf("events after unsubscribe: %v", got)
	}
	// The fixture's own subscriber is still there.
	if n := len(f.eventsOf(EventDeviceEnabled, "dev-1")); n != 1 {
		t.Errorf("other subscriber saw %d enable events", n)
	}
}

// Racing changes on one device: every call either succeeds or is refused
// cleanly, revoked stays final, and events come out in a consistent order.
func TestConcurrentChanges(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	_, cert := f.addDevice(t, "dev-1", nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				var err error
				switch (i + j) % 4 {
				case 0:
					_, err = f.reg.Disable(ctx, "dev-1", "x")
				case 1:
					_, err = f.reg.Enable(ctx, "dev-1")
				case 2:
					if i == 3 && j == 3 {
						_, err = f.reg.Revoke(ctx, "dev-1", "done")
					}
				case 3:
					_, err = f.reg.Authenticate(ctx, cert)
					var ae *AuthError
					if errors.As(err, &ae) {
						err = nil
					}
				}
				if err != nil && !errors.Is(err, store.ErrRevoked) {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d, err := f.reg.Device(ctx, "dev-1")
	if err != nil || d.State != store.StateRevoked {
		t.Fatalf("final state %+v, %v; want revoked", d.Device, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	revokedAt := -1
	state := store.StateActive
	for i, e := range f.events {
		switch e.Kind {
		case EventDeviceRevoked:
			if revokedAt >= 0 {
				t.Error("two device-revoked events")
			}
			revokedAt = i
		case EventDeviceDisabled:
			if state != store.StateActive {
				t.Errorf("event %d: disabled while %s", i, state)
			}
			state = store.StateDisabled
		case EventDeviceEnabled:
			if state != store.StateDisabled {
				t.Errorf("event %d: enabled while %s", i, state)
			}
			state = store.StateActive
		}
		if revokedAt >= 0 && i > revokedAt {
			t.Errorf("event %s after device-revoked", e.Kind)
		}
	}
}

func TestCRLReasonCode(t *testing.T) {
	for _, tc := range []struct {
		reason string
		want   int
	}{
		{"", 0},
		{"keyCompromise", 1},
		{"key-compromise", 1},
		{" Key Compromise ", 1},
		{"stolen", 1},
		{"stolen from the van", 0},
		{"affiliation_changed", 3},
		{"superseded", 4},
		{"Replaced", 4},
		{"cessationOfOperation", 5},
		{"decommissioned", 5},
		{"privilegeWithdrawn", 9},
		{"certificateHold", 0},
		{"cACompromise", 0},
	} {
		if got := CRLReasonCode(tc.reason); got != tc.want {
			t.Errorf("CRLReasonCode(%q) = %d, want %d", tc.reason, got, tc.want)
		}
	}
}

func TestValidateTags(t *testing.T) {
	many := map[string]string{}
	for i := range MaxTags + 1 {
		many["k"+strings.Repeat("x", i%60)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	for _, tc := range []struct {
		name string
		tags map[string]string
		ok   bool
	}{
		{"nil", nil, true},
		{"typical", map[string]string{"site": "lyon", "fw.channel": "beta", "rack_2-a": ""}, true},
		{"longest key", map[string]string{strings.Repeat("k", MaxTagKeyLen): "v"}, true},
		{"longest value", map[string]string{"k": strings.Repeat("v", MaxTagValueLen)}, true},
		{"unicode value", map[string]string{"k": "Zürich ☃"}, true},
		{"empty key", map[string]string{"": "v"}, false},
		{"key too long", map[string]string{strings.Repeat("k", MaxTagKeyLen+1): "v"}, false},
		{"uppercase key", map[string]string{"Site": "v"}, false},
		{"key with space", map[string]string{"a b": "v"}, false},
		{"key with slash", map[string]string{"a/b": "v"}, false},
		{"value too long", map[string]string{"k": strings.Repeat("v", MaxTagValueLen+1)}, false},
		{"value not UTF-8", map[string]string{"k": "\xff"}, false},
		{"value with newline", map[string]string{"k": "a\nb"}, false},
		{"too many", many, false},
	} {
		err := ValidateTags(tc.tags)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateTags(%s) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateTags(%s) error %v does not wrap ErrInvalid", tc.name, err)
		}
	}
}

func TestSetTags(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", map[string]string{"a": "1"})
	if err := f.reg.SetTags(ctx, "dev-1", map[string]string{"b": "2"}); err != nil {
		t.Fatal(err)
	}
	info, err := f.reg.Device(ctx, "dev-1")
	if err != nil || len(info.Tags) != 1 || info.Tags["b"] != "2" {
		t.Errorf("after SetTags: %+v, %v", info.Tags, err)
	}
	if err := f.reg.SetTags(ctx, "dev-1", map[string]string{"B": "2"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetTags(bad key) = %v, want ErrInvalid", err)
	}
	if err := f.reg.SetTags(ctx, "missing", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetTags(missing) = %v, want ErrNotFound", err)
	}
}

// stateOverride reports a chosen state (or absence) for every device and
// service, to reach the refusals that a consistent store never produces
// once credentials are checked (a registered credential whose subject is
// missing, or revoked while the credential is not).
type stateOverride struct {
	store.Store
	state store.DeviceState // "" means not found
}

// Admission is the lookup Authenticate makes.
func (s stateOverride) Admission(ctx context.Context, serial string) (store.Admission, error) {
	a, err := s.Store.Admission(ctx, serial)
	a.SubjectState = s.state
	return a, err
}

func (s stateOverride) GetDevice(ctx context.Context, id string) (store.Device, error) {
	if s.state == "" {
		return store.Device{}, fmt.Errorf("device %q: %w", id, store.ErrNotFound)
	}
	d, err := s.Store.GetDevice(ctx, id)
	d.State = s.state
	return d, err
}

func (s stateOverride) GetService(ctx context.Context, name string) (store.Service, error) {
	if s.state == "" {
		return store.Service{}, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
	}
	sv, err := s.Store.GetService(ctx, name)
	sv.State = s.state
	return sv, err
}

func TestAuthenticateSubjectState(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	_, devCert := f.addDevice(t, "dev-1", nil)
	_, svcCert, err := f.reg.AddService(ctx, "svc", identity.RoleReader, csrFor(t, "svc"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		state           store.DeviceState
		device, service string
	}{
		{"", ReasonUnknownDevice, ReasonUnknownService},
		{store.StateDisabled, ReasonDeviceDisabled, ReasonServiceDisabled},
		{store.StateRevoked, ReasonDeviceRevoked, ReasonServiceRevoked},
		{"corrupt", ReasonDeviceRevoked, ReasonServiceRevoked},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			g := &fixture{reg: New(stateOverride{f.st, tc.state}, f.ca, Options{Now: f.clock.Now})}
			g.wantRefusal(t, devCert, tc.device)
			g.wantRefusal(t, svcCert, tc.service)
		})
	}
	g := &fixture{reg: New(stateOverride{f.st, store.StateActive}, f.ca, Options{Now: f.clock.Now})}
	g.wantAccepted(t, svcCert, identity.Principal{Kind: identity.KindService, ID: "svc", Role: identity.RoleReader})
}

// Devices and services connect with their name as MQTT client ID, so one
// name can never belong to both.
func TestDeviceAndServiceNamesDoNotCollide(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	if _, _, err := f.reg.AddDevice(ctx, DeviceSpec{ID: "shared"}, csrFor(t, "shared")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.reg.AddService(ctx, "shared", "reader", csrFor(t, "shared")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("service named like a device: err = %v, want ErrConflict", err)
	}
	if _, _, err := f.reg.AddService(ctx, "ops", "commander", csrFor(t, "ops")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.reg.AddDevice(ctx, DeviceSpec{ID: "ops"}, csrFor(t, "ops")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("device named like a service: err = %v, want ErrConflict", err)
	}
	if ok, _ := f.reg.DeviceExists(ctx, "ops"); ok {
		t.Fatal("the refused device was registered")
	}
}
