package faults

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
	"github.com/warden-iot/warden/internal/wardentest"
)

// rotationFleet is how many devices a killed rotation re-issues.
func rotationFleet() int { return scaled(120, 60) }

// caStatus is what `warden ca status` shows, read from what is committed:
// the issuing CAs from pki/authority.json, the latest rotation and its
// counts from the registry (a CLI run per poll costs a second under the
// race detector).
type caStatus struct {
	Issuers []struct {
		Fingerprint string `json:"fingerprint"`
		State       string `json:"state"`
	} `json:"issuers"`
	Rotation *store.Rotation
	Devices  map[string]int
	Total    int
}

func readCAStatus(t testing.TB, n *node, db *sqlite.Store) caStatus {
	t.Helper()
	var st caStatus
	b, err := os.ReadFile(filepath.Join(n.Data, "pki", "authority.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("pki/authority.json: %v", err)
	}
	ctx := context.Background()
	rs, err := db.ListRotations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rs {
		if st.Rotation == nil || rs[i].CreatedAt.After(st.Rotation.CreatedAt) {
			st.Rotation = &rs[i]
		}
	}
	if st.Rotation != nil {
		if st.Devices, err = db.RotationCounts(ctx, st.Rotation.ID); err != nil {
			t.Fatal(err)
		}
		for _, c := range st.Devices {
			st.Total += c
		}
	}
	return st
}

func (st caStatus) issuerState(fp string) string {
	for _, is := range st.Issuers {
		if is.Fingerprint == fp {
			return is.State
		}
	}
	return ""
}

// Threat: a crash during a CA rotation leaves the CA unloadable, two
// current issuing CAs or none, a fleet that cannot connect, a device
// certificate that was delivered but that the registry does not know, a
// device re-issued twice, or a rotation that can neither finish nor be
// retired.
//
// Control: internal/pki Rotate commits with one atomic write of
// authority.json (a pending rotation is finished by Load); internal/
// rotation Manager.Start records the rotation before re-issuing, Step
// resumes it (reissueOne reuses a credential a step before the crash
// stored, registry.Reissue stores before the rotation records the serial,
// which is recorded before delivery), adopt records a rotation the CA went
// through without one; the broker trusts the current issuing CA and those
// in grace (pki.ClientCAs), and the registry decides which certificates
// are valid.
//
// Kill points: the server killed as the rotation commits (its ca.rotate
// audit entry), the server killed while re-issuing (a third of the
// device.reissue entries written), and the CLI killed while it re-issues
// on a stopped server (`warden ca rotate` without a server).
//
// After each restart: one current issuing CA (pki/issuing.crt, the
// rotation's new one) and the old one in grace; every device ends with
// exactly one credential of the new issuing CA, of the key it always had;
// every serial the rotation recorded is a credential of the registry; one
// ca.rotate entry; devices connect with the old and with the new chain.
// The rotation is then continued until every device switched, or the old
// issuing CA is retired: either way the rotation completes, and old
// certificates are refused while new ones connect.
func TestKillDuringCARotation(t *testing.T) {
	t.Parallel()
	for _, kp := range []struct {
		name    string
		offline bool   // rotate with the CLI on a stopped server, and kill the CLI
		audit   string // kill when this audit action appears ...
		count   int    // ... this many times
		finish  string // "switch" every device, or "retire" the old issuing CA
	}{
		{name: "server-killed-as-rotation-commits", audit: `"action":"ca.rotate"`, count: 1, finish: "retire"},
		{name: "server-killed-while-reissuing", audit: `"action":"device.reissue"`, count: rotationFleet() / 3, finish: "switch"},
		{name: "cli-killed-while-reissuing-on-stopped-server", offline: true, audit: `"action":"device.reissue"`, count: rotationFleet() / 3, finish: "retire"},
	} {
		t.Run(kp.name, func(t *testing.T) {
			n := startNode(t)
			dir := t.TempDir()
			ids := strings.Fields(n.mustCLI("device", "provision", "--count", fmt.Sprint(rotationFleet()), "--model", "fault-rot", "--out", dir))
			if len(ids) != rotationFleet() {
				t.Fatalf("provisioned %d devices", len(ids))
			}
			n.secrets.AddCredentialDir(t, dir)
			n.secrets.AddSealedKeys(t, n.Data) // the old issuing key: it must be gone, not leaked
			oldFP := pki.Fingerprint(wardentest.IssuingCA(t, n.Data))
			if kp.offline {
				n.stop()
			}
			p := n.startCLI("ca", "rotate", "--grace", "1h", "--no-wait")
			if !poll(time.Minute, func() bool { return auditCount(n.Data, kp.audit) >= kp.count }) {
				t.Fatalf("no %d %s audit entries", kp.count, kp.audit)
			}
			if kp.offline {
				p.kill()
			} else {
				n.kill()
			}
			reissued := auditCount(n.Data, `"action":"device.reissue"`)
			_, err := p.wait(t)
			t.Logf("killed with %d of %d devices re-issued in the audit log; CLI: %v", reissued, rotationFleet(), err)
			n.restart()
			db := wardentest.OpenStore(t, n.Data)

			newIssuing := wardentest.IssuingCA(t, n.Data)
			newFP := pki.Fingerprint(newIssuing)
			st := readCAStatus(t, n, db)
			current := 0
			for _, is := range st.Issuers {
				if is.State == "current" {
					current++
				}
			}
			if current != 1 || st.issuerState(newFP) != "current" || newFP == oldFP {
				t.Fatalf("issuers after the restart: %+v (issuing.crt %s, old %s)", st.Issuers, newFP[:12], oldFP[:12])
			}
			if st.issuerState(oldFP) != "grace" {
				t.Fatalf("the old issuing CA is %q after the restart, want grace", st.issuerState(oldFP))
			}
			if st.Rotation == nil || st.Rotation.State != store.RotationRunning || st.Rotation.OldIssuer != oldFP || st.Rotation.NewIssuer != newFP || st.Total != rotationFleet() {
				t.Fatalf("rotation after the restart: %+v, %d devices", st.Rotation, st.Total)
			}
			rid := st.Rotation.ID
			wardentest.Eventually(t, 30*time.Second, "every device re-issued after the restart", func() bool {
				s := readCAStatus(t, n, db)
				return s.Devices[store.RotationDevicePending] == 0 && s.Devices[store.RotationDeviceIssued] == 0
			})
			if got := auditCount(n.Data, `"action":"ca.rotate"`); got != 1 {
				t.Errorf("%d ca.rotate entries in the audit log, want 1", got)
			}

			// The registry and the rotation agree, and nobody was
			// re-issued twice.
			newCerts := checkReissued(t, db, rid, ids, newIssuing)

			// Both chains connect while the old issuing CA is in grace.
			sample := []string{ids[0], ids[len(ids)/2], ids[len(ids)-1]}
			newCreds := map[string]wardentest.Creds{}
			for _, id := range ids {
				newCreds[id] = writeCreds(t, dir, id, newCerts[id])
			}
			for _, id := range sample {
				if !connects(t, n.MQTTS, creds(dir, id)) {
					t.Errorf("device %s cannot connect with its old certificate during the grace period", id)
				}
				if !connects(t, n.MQTTS, newCreds[id]) {
					t.Errorf("device %s cannot connect with its re-issued certificate", id)
				}
			}

			switch kp.finish {
			case "switch":
				for _, id := range ids {
					if !connects(t, n.MQTTS, newCreds[id]) {
						t.Fatalf("device %s cannot connect with its re-issued certificate", id)
					}
				}
				wardentest.Eventually(t, 30*time.Second, "the rotation to complete once every device switched", func() bool {
					r := readCAStatus(t, n, db).Rotation
					return r.State == "completed"
				})
			case "retire":
				n.mustCLI("ca", "retire-issuer", oldFP)
				wardentest.Eventually(t, 30*time.Second, "the rotation to complete once the old issuing CA is retired", func() bool {
					return readCAStatus(t, n, db).Rotation.State == "completed"
				})
			}
			end := readCAStatus(t, n, db)
			t.Logf("rotation %s: %s", end.Rotation.ID, end.Rotation.Reason)
			if end.issuerState(oldFP) != "retired" {
				t.Errorf("old issuing CA is %s after the rotation", end.issuerState(oldFP))
			}
			handshakes := n.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`)
			for _, id := range sample {
				if connects(t, n.MQTTS, creds(dir, id)) {
					t.Errorf("device %s connected with a certificate of the retired issuing CA", id)
				}
				if !connects(t, n.MQTTS, newCreds[id]) {
					t.Errorf("device %s cannot connect with its re-issued certificate after the rotation", id)
				}
			}
			// The retired chain is refused in the TLS handshake: counted,
			// and audited (sampled).
			if got := n.Metric(t, "warden_tls_handshake_failures_total", `listener="mqtts"`); got < handshakes+float64(len(sample)) {
				t.Errorf(`warden_tls_handshake_failures_total{listener="mqtts"} = %v, want at least %v`, got, handshakes+float64(len(sample)))
			}
			wardentest.Eventually(t, 10*time.Second, "the refused handshake in the audit log", func() bool {
				return n.AuditContains(`"action":"tls.handshake"`, `"outcome":"denied"`, `"listener":"mqtts"`)
			})
			if got := auditCount(n.Data, `"action":"ca.rotation-complete"`); got != 1 {
				t.Errorf("%d ca.rotation-complete entries, want 1", got)
			}
			n.checkAtRest()
		})
	}
}

// checkReissued checks every device of rotation rid: exactly one
// unrevoked credential signed by newIssuing, for the key of its first one,
// and, if the rotation recorded a serial, that credential. It returns the
// new certificates.
func checkReissued(t *testing.T, st interface {
	Credentials(context.Context, identity.Kind, string) ([]store.Credential, error)
	RotationDevices(context.Context, string, string, string, int) ([]store.RotationDevice, error)
}, rid string, ids []string, newIssuing *x509.Certificate) map[string]*x509.Certificate {
	t.Helper()
	ctx := context.Background()
	rds, err := st.RotationDevices(ctx, rid, "", "", store.MaxListLimit)
	if err != nil {
		t.Fatal(err)
	}
	serial := map[string]string{}
	for _, d := range rds {
		serial[d.DeviceID] = d.Serial
	}
	if len(rds) != len(ids) {
		t.Errorf("the rotation has %d devices, want %d", len(rds), len(ids))
	}
	out := map[string]*x509.Certificate{}
	for _, id := range ids {
		cr, err := st.Credentials(ctx, identity.KindDevice, id)
		if err != nil {
			t.Fatal(err)
		}
		var first, next []*x509.Certificate
		for _, c := range cr {
			cert, err := x509.ParseCertificate(c.Certificate)
			if err != nil {
				t.Fatalf("device %s credential %s: %v", id, c.Serial, err)
			}
			if c.Revoked() {
				continue
			}
			if cert.CheckSignatureFrom(newIssuing) == nil {
				next = append(next, cert)
				if s := serial[id]; s != "" && s != c.Serial {
					t.Errorf("device %s: the rotation recorded serial %s, the registry holds %s", id, s, c.Serial)
				}
			} else {
				first = append(first, cert)
			}
		}
		switch {
		case len(next) == 0:
			t.Errorf("device %s has no certificate of the new issuing CA", id)
			continue
		case len(next) > 1:
			t.Errorf("REISSUED TWICE: device %s has %d certificates of the new issuing CA", id, len(next))
		}
		if s := serial[id]; s != "" && s != pki.SerialHex(next[0].SerialNumber) {
			t.Errorf("DELIVERED UNKNOWN: device %s: the rotation's serial %s is not its registry credential", id, s)
		}
		if len(first) != 1 || !samePublicKey(first[0], next[0]) {
			t.Errorf("device %s: re-issued certificate is not for the key it had (%d old certificates)", id, len(first))
		}
		out[id] = next[0]
	}
	return out
}

// writeCreds writes cert beside device id's key, as a device stores the
// certificate a rotation delivered, and returns the credentials.
func writeCreds(t testing.TB, dir, id string, cert *x509.Certificate) wardentest.Creds {
	t.Helper()
	c := creds(dir, id)
	c.Cert = filepath.Join(dir, id+".rotated.crt")
	if err := os.WriteFile(c.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// samePublicKey reports whether two certificates certify one key.
func samePublicKey(a, b *x509.Certificate) bool {
	ka, ok := a.PublicKey.(*ecdsa.PublicKey)
	return ok && ka.Equal(b.PublicKey)
}
