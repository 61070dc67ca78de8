package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
)

// allow is an Enroll authorizer that accepts every enrollment, standing in
// for a verified secret proof.
func allow(store.Enrollment, *x509.CertificateRequest) error { return nil }

// keyCSR returns a fresh key and a CSR of it naming cn.
func keyCSR(t *testing.T, cn string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.CreateCSR(key, cn)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func secretEntry(id string, recovery bool) store.Enrollment {
	return store.Enrollment{DeviceID: id, Method: store.EnrollSecret, Secret: []byte("sealed-" + id), Recovery: recovery}
}

// enrollFirst preregisters id with a model and tags and enrolls it; it
// returns the device, its certificate and its key.
func (f *fixture) enrollFirst(t *testing.T, id string) (store.Device, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	ctx := context.Background()
	e := secretEntry(id, false)
	e.Model, e.Tags = "sensor-v2", map[string]string{"site": "lyon"}
	if err := f.reg.Preregister(ctx, []store.Enrollment{e}); err != nil {
		t.Fatalf("Preregister(%s): %v", id, err)
	}
	key, csr := keyCSR(t, id)
	d, cert, err := f.reg.Enroll(ctx, csr, allow)
	if err != nil {
		t.Fatalf("Enroll(%s): %v", id, err)
	}
	return d, cert, key
}

// wantEnrollRefusal checks that err is an *EnrollError with reason.
func wantEnrollRefusal(t *testing.T, what string, err error, reason string) {
	t.Helper()
	var ee *EnrollError
	if !errors.As(err, &ee) || ee.Reason != reason {
		t.Errorf("%s = %v, want a refusal %q", what, err, reason)
	}
}

func (f *fixture) currentCRL(t *testing.T) *x509.RevocationList {
	t.Helper()
	der, err := f.ca.CurrentCRL()
	if err != nil {
		t.Fatal(err)
	}
	return f.crl(t, der)
}

func TestRecoveryEnrollment(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	enrolled, first, _ := f.enrollFirst(t, "dev-1")
	renewed, err := f.reg.Renew(ctx, "dev-1", csrFor(t, "dev-1"))
	if err != nil {
		t.Fatal(err)
	}
	_, other := f.addDevice(t, "dev-2", nil)
	devPrincipal := identity.Principal{Kind: identity.KindDevice, ID: "dev-1"}

	// Without recovery a registered ID is still refused.
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", false)}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Preregister(registered device) = %v, want ErrConflict", err)
	}
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true)}); err != nil {
		t.Fatalf("Preregister(recovery): %v", err)
	}
	e, err := f.st.GetEnrollment(ctx, "dev-1")
	if err != nil || !e.Recovery || e.Used() || e.Model != "" || len(e.Tags) != 0 {
		t.Fatalf("recovery enrollment = %+v, %v", e, err)
	}

	// The device lost its key: a new one.
	newKey, csr := keyCSR(t, "dev-1")
	f.clock.Set(f.clock.Now().Add(time.Hour))
	d, cert, err := f.reg.Enroll(ctx, csr, allow)
	if err != nil {
		t.Fatalf("recovery Enroll: %v", err)
	}
	if d.ID != "dev-1" || d.Model != enrolled.Model || d.Tags["site"] != "lyon" || d.State != store.StateActive ||
		!d.CreatedAt.Equal(enrolled.CreatedAt) {
		t.Errorf("recovered device = %+v, want the registered one %+v unchanged", d, enrolled)
	}
	if !newKey.PublicKey.Equal(cert.PublicKey) {
		t.Error("the recovery certificate is not for the CSR's key")
	}
	f.wantAccepted(t, cert, devPrincipal)
	f.wantRefusal(t, first, ReasonCredentialRevoked)
	f.wantRefusal(t, renewed, ReasonCredentialRevoked)
	f.wantAccepted(t, other, identity.Principal{Kind: identity.KindDevice, ID: "dev-2"})
	info, err := f.reg.Device(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range info.Credentials {
		switch {
		case c.Serial == pki.SerialHex(cert.SerialNumber):
			if c.Revoked() {
				t.Errorf("the recovery credential is revoked: %+v", c)
			}
		case !c.Revoked() || c.RevocationReason != store.RecoveryRevocationReason:
			t.Errorf("earlier credential %s after recovery: revoked %v, reason %q", c.Serial, c.Revoked(), c.RevocationReason)
		}
	}
	crl := f.currentCRL(t)
	for _, c := range []*x509.Certificate{first, renewed} {
		if _, ok := crlEntry(crl, c.SerialNumber); !ok {
			t.Errorf("CRL does not list the superseded serial %s", pki.SerialHex(c.SerialNumber))
		}
	}
	for _, c := range []*x509.Certificate{cert, other} {
		if _, ok := crlEntry(crl, c.SerialNumber); ok {
			t.Errorf("CRL lists the valid serial %s", pki.SerialHex(c.SerialNumber))
		}
	}
	if evs := f.eventsOf(EventDeviceRecovered, "dev-1"); len(evs) != 1 || evs[0].Reason == "" {
		t.Errorf("device-recovered events = %+v, want exactly one", evs)
	}
	if n := len(f.eventsOf(EventDeviceAdded, "dev-1")); n != 1 {
		t.Errorf("%d device-added events, want only the first enrollment's", n)
	}
	logged := 0
	for _, l := range f.logs.lines(t) {
		if l["event"] == string(EventDeviceRecovered) {
			logged++
			if l["device"] != "dev-1" || l["serial"] != pki.SerialHex(cert.SerialNumber) {
				t.Errorf("recovery log line: %v", l)
			}
		}
	}
	if logged != 1 {
		t.Errorf("%d log lines for the recovery, want 1", logged)
	}

	// Single use.
	_, err = f.enrollAgain(t, "dev-1")
	wantEnrollRefusal(t, "second recovery Enroll", err, ReasonEnrollmentUsed)
	f.wantAccepted(t, cert, devPrincipal)

	// Re-armed, the device may recover with the key it has (its
	// certificate expired, say): the CSR of the same key works.
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true)}); err != nil {
		t.Fatalf("re-arm: %v", err)
	}
	sameKey, err := pki.CreateCSR(newKey, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	_, cert2, err := f.reg.Enroll(ctx, sameKey, allow)
	if err != nil {
		t.Fatalf("recovery with the same key: %v", err)
	}
	f.wantAccepted(t, cert2, devPrincipal)
	f.wantRefusal(t, cert, ReasonCredentialRevoked)
	if n := len(f.eventsOf(EventDeviceRecovered, "dev-1")); n != 2 {
		t.Errorf("%d device-recovered events, want 2", n)
	}
}

// enrollAgain sends a fresh CSR for id through Enroll.
func (f *fixture) enrollAgain(t *testing.T, id string) (*x509.Certificate, error) {
	t.Helper()
	_, cert, err := f.reg.Enroll(context.Background(), csrFor(t, id), allow)
	return cert, err
}

func TestPreregisterRecoveryRefusals(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.addDevice(t, "dev-1", nil)
	f.addDevice(t, "gone", nil)
	if _, err := f.reg.Revoke(ctx, "gone", "stolen"); err != nil {
		t.Fatal(err)
	}
	withModel := secretEntry("dev-1", true)
	withModel.Model = "sensor-v3"
	withTags := secretEntry("dev-1", true)
	withTags.Tags = map[string]string{"site": "paris"}
	byClaim := store.Enrollment{DeviceID: "dev-1", Method: store.EnrollClaim, Claim: "fleet", Recovery: true}
	for _, tc := range []struct {
		name string
		e    store.Enrollment
		want error
	}{
		{"unknown device", secretEntry("stranger", true), store.ErrNotFound},
		{"revoked device", secretEntry("gone", true), store.ErrRevoked},
		{"by claim certificate", byClaim, ErrInvalid},
		{"with a model", withModel, ErrInvalid},
		{"with tags", withTags, ErrInvalid},
		{"invalid ID", secretEntry("a/b", true), ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A valid recovery first: a refused batch stores none of it.
			err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true), tc.e})
			if !errors.Is(err, tc.want) {
				t.Errorf("Preregister(%s) = %v, want %v", tc.name, err, tc.want)
			}
			if _, err := f.st.GetEnrollment(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("enrollment of a refused batch stored: %v", err)
			}
		})
	}
}

func TestRecoveryEnrollmentRefusals(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()

	// The authorizer refuses: nothing changes.
	_, cert, _ := f.enrollFirst(t, "dev-1")
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true)}); err != nil {
		t.Fatal(err)
	}
	_, _, err := f.reg.Enroll(ctx, csrFor(t, "dev-1"), func(store.Enrollment, *x509.CertificateRequest) error {
		return &EnrollError{Reason: ReasonBadProof, Err: errors.New("wrong secret")}
	})
	wantEnrollRefusal(t, "Enroll(bad proof)", err, ReasonBadProof)
	f.wantAccepted(t, cert, identity.Principal{Kind: identity.KindDevice, ID: "dev-1"})
	if e, err := f.st.GetEnrollment(ctx, "dev-1"); err != nil || e.Used() {
		t.Errorf("recovery enrollment after a refusal: %+v, %v", e, err)
	}

	// A disabled device is refused until it is enabled.
	if _, err := f.reg.Disable(ctx, "dev-1", "maintenance"); err != nil {
		t.Fatal(err)
	}
	_, err = f.enrollAgain(t, "dev-1")
	wantEnrollRefusal(t, "Enroll(disabled device)", err, ReasonDeviceDisabled)
	if info, err := f.reg.Device(ctx, "dev-1"); err != nil || len(info.Credentials) != 1 || info.Credentials[0].Revoked() {
		t.Errorf("credentials after a refused recovery: %+v, %v", info.Credentials, err)
	}
	if _, err := f.reg.Enable(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.enrollAgain(t, "dev-1"); err != nil {
		t.Errorf("recovery after enabling: %v", err)
	}

	// A device revoked after it was armed.
	f.enrollFirst(t, "dev-2")
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-2", true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Revoke(ctx, "dev-2", "stolen"); err != nil {
		t.Fatal(err)
	}
	_, err = f.enrollAgain(t, "dev-2")
	wantEnrollRefusal(t, "Enroll(revoked device)", err, ReasonDeviceRevoked)
	if n := len(f.eventsOf(EventDeviceRecovered, "dev-2")); n != 0 {
		t.Errorf("%d device-recovered events for a refused recovery", n)
	}

	// Without recovery nothing changed: an unused first enrollment for an
	// ID registered since is refused as before.
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-3", false)}); err != nil {
		t.Fatal(err)
	}
	f.addDevice(t, "dev-3", nil)
	_, err = f.enrollAgain(t, "dev-3")
	wantEnrollRefusal(t, "Enroll(first enrollment of a registered device)", err, ReasonDeviceExists)
}

// A device whose certificate expired recovers with a fresh certificate.
func TestRecoveryOfExpiredDevice(t *testing.T) {
	f := newFixture(t, fixtureOptions{deviceLifetime: 24 * time.Hour})
	ctx := context.Background()
	_, cert, key := f.enrollFirst(t, "dev-1")
	f.clock.Set(cert.NotAfter.Add(time.Hour))
	f.wantRefusal(t, cert, ReasonExpired)
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true)}); err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	_, fresh, err := f.reg.Enroll(ctx, csr, allow)
	if err != nil {
		t.Fatalf("recovery of an expired device: %v", err)
	}
	if !fresh.NotAfter.After(f.clock.Now()) {
		t.Errorf("recovery certificate expires at %s, before now", fresh.NotAfter)
	}
	f.wantAccepted(t, fresh, identity.Principal{Kind: identity.KindDevice, ID: "dev-1"})
}

// A recovery whose CRL cannot be signed still gives the device its
// certificate: the registry refuses the revoked ones at once, and the
// failure is logged for the operator.
func TestRecoverySurvivesCRLFailure(t *testing.T) {
	fail := &failingCRL{}
	f := newFixture(t, fixtureOptions{issuer: func(a *pki.Authority) Issuer { fail.Authority = a; return fail }})
	ctx := context.Background()
	_, first, _ := f.enrollFirst(t, "dev-1")
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true)}); err != nil {
		t.Fatal(err)
	}
	fail.fail = true
	cert, err := f.enrollAgain(t, "dev-1")
	if err != nil {
		t.Fatalf("recovery with a failing CRL: %v", err)
	}
	f.wantAccepted(t, cert, identity.Principal{Kind: identity.KindDevice, ID: "dev-1"})
	f.wantRefusal(t, first, ReasonCredentialRevoked)
	found := false
	for _, l := range f.logs.lines(t) {
		if l["level"] == "ERROR" && strings.Contains(fmt.Sprint(l["msg"]), "CRL") && l["device"] == "dev-1" {
			found = true
		}
	}
	if !found {
		t.Error("the CRL failure after a recovery was not logged")
	}
	fail.fail = false
	der, err := f.reg.RefreshCRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := crlEntry(f.crl(t, der), first.SerialNumber); !ok {
		t.Error("retried CRL does not list the superseded serial")
	}
}

// Racing recoveries with one recovery enrollment: exactly one wins, the
// others are refused as used, and the device has one valid credential.
func TestConcurrentRecovery(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.enrollFirst(t, "dev-1")
	if err := f.reg.Preregister(ctx, []store.Enrollment{secretEntry("dev-1", true)}); err != nil {
		t.Fatal(err)
	}
	const workers = 8
	csrs := make([][]byte, workers)
	for i := range csrs {
		csrs[i] = csrFor(t, "dev-1")
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		won     []*x509.Certificate
		reasons []string
	)
	start := make(chan struct{})
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, cert, err := f.reg.Enroll(ctx, csrs[i], allow)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				reasons = append(reasons, EnrollReason(err))
				return
			}
			won = append(won, cert)
		}()
	}
	close(start)
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d recoveries won, want exactly 1 (refusals: %v)", len(won), reasons)
	}
	for _, r := range reasons {
		if r != ReasonEnrollmentUsed {
			t.Errorf("losing recovery refused with %q, want %q", r, ReasonEnrollmentUsed)
		}
	}
	info, err := f.reg.Device(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	var valid []string
	for _, c := range info.Credentials {
		if !c.Revoked() {
			valid = append(valid, c.Serial)
		}
	}
	if len(valid) != 1 || valid[0] != pki.SerialHex(won[0].SerialNumber) {
		t.Errorf("unrevoked credentials %v, want only the winner's %s", valid, pki.SerialHex(won[0].SerialNumber))
	}
	if n := len(f.eventsOf(EventDeviceRecovered, "dev-1")); n != 1 {
		t.Errorf("%d device-recovered events, want 1", n)
	}
}
