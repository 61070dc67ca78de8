package app

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

func TestMaintenanceRenewsWhatIsDue(t *testing.T) {
	dir := t.TempDir()
	mk := make([]byte, 32)
	rand.Read(mk)
	ks, _ := keystore.New(mk)
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{CRLURL: "http://localhost:8080/crl"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := registry.New(st, ca, registry.Options{})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	now := time.Now()

	// A fresh CRL is left alone; one near its NextUpdate is re-signed.
	if done, err := refreshCRLIfDue(context.Background(), ca, reg, now); err != nil || done {
		t.Fatalf("fresh CRL refreshed: %v %v", done, err)
	}
	der, _ := ca.CurrentCRL()
	crl, _ := x509.ParseRevocationList(der)
	later := crl.NextUpdate.Add(-time.Hour)
	if done, err := refreshCRLIfDue(context.Background(), ca, reg, later); err != nil || !done {
		t.Fatalf("due CRL not refreshed: %v %v", done, err)
	}
	der2, _ := ca.CurrentCRL()
	crl2, _ := x509.ParseRevocationList(der2)
	if crl2.Number.Cmp(crl.Number) <= 0 {
		t.Fatalf("CRL number did not increase: %v -> %v", crl.Number, crl2.Number)
	}

	// After a rotation the CRL signed by the old issuing CA is re-signed at
	// once by the new one.
	if _, err := ca.Rotate(time.Hour); err != nil {
		t.Fatal(err)
	}
	if done, err := refreshCRLIfDue(context.Background(), ca, reg, now); err != nil || !done {
		t.Fatalf("CRL of the old issuing CA not re-signed after a rotation: %v %v", done, err)
	}
	der3, _ := ca.CurrentCRL()
	crl3, _ := x509.ParseRevocationList(der3)
	if err := crl3.CheckSignatureFrom(ca.Issuing()); err != nil {
		t.Fatalf("CRL after rotation: %v", err)
	}

	// The server certificate is renewed for a new hostname, and not otherwise.
	before, _ := ca.ServerCertificate()
	if err := ensureServerCertificate(ca, nil, now, log); err != nil {
		t.Fatal(err)
	}
	same, _ := ca.ServerCertificate()
	if !same.Leaf.Equal(before.Leaf) {
		t.Fatal("server certificate renewed without reason")
	}
	if err := ensureServerCertificate(ca, []string{"mqtt.example.com", "192.0.2.7"}, now, log); err != nil {
		t.Fatal(err)
	}
	after, _ := ca.ServerCertificate()
	if after.Leaf.VerifyHostname("mqtt.example.com") != nil || !covers(after.Leaf, "192.0.2.7") || !covers(after.Leaf, "127.0.0.1") {
		t.Fatalf("renewed certificate SANs: %v %v", after.Leaf.DNSNames, after.Leaf.IPAddresses)
	}
	// Close to expiry: renewed.
	if err := ensureServerCertificate(ca, []string{"mqtt.example.com", "192.0.2.7"}, after.Leaf.NotAfter.Add(-24*time.Hour), log); err != nil {
		t.Fatal(err)
	}
	renewed, _ := ca.ServerCertificate()
	if renewed.Leaf.Equal(after.Leaf) {
		t.Fatal("expiring server certificate not renewed")
	}
}
