package e2e

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// addExpiredDevice registers a device whose certificate expired a minute
// ago, opening the registry beside the running server (SQLite in WAL mode
// allows it) the way an operator tool would.
func (s *server) addExpiredDevice(id string) creds {
	t := s.t
	t.Helper()
	cfg := config.Default()
	cfg.Data = s.data
	p := cfg.Paths()
	// A CA and registry whose clock runs two hours behind issue a one-hour
	// certificate that expired an hour ago.
	past := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	mk, err := keystore.LoadMasterKey(p.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.New(mk)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Load(p.PKI, ks, past)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), p.RegistryDB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := registry.New(st, ca, registry.Options{Now: past, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := pki.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueDevice(csr, id, time.Hour)
	if err != nil {
		t.Fatalf("issue a certificate: %v", err)
	}
	if time.Now().Before(cert.NotAfter) {
		t.Fatalf("certificate not expired: NotAfter %v", cert.NotAfter)
	}
	if _, err := reg.RegisterDevice(context.Background(), registry.DeviceSpec{ID: id}, csrDER, cert); err != nil {
		t.Fatalf("register the expired device: %v", err)
	}
	dir := t.TempDir()
	keyPEM, err := pki.EncodePrivateKey(key, "pem")
	if err != nil {
		t.Fatal(err)
	}
	c := creds{id: id, cert: filepath.Join(dir, id+".crt"), key: filepath.Join(dir, id+".key"), ca: filepath.Join(dir, "ca.crt")}
	os.WriteFile(c.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
	os.WriteFile(c.key, keyPEM, 0o600)
	os.WriteFile(c.ca, ca.RootPEM(), 0o644)
	return c
}

// jsonField walks a dotted path ("credentials.0.serial") through JSON.
func jsonField(t testing.TB, doc, path string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("parse JSON: %v\n%s", err, doc)
	}
	for _, part := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[part]
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i >= len(x) {
				t.Fatalf("path %s: bad index %s", path, part)
			}
			v = x[i]
		default:
			t.Fatalf("path %s: cannot descend into %T", path, v)
		}
	}
	s, ok := v.(string)
	if !ok {
		t.Fatalf("path %s: not a string: %v", path, v)
	}
	return s
}
