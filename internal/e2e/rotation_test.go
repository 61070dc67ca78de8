package e2e

import (
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/wardentest"
)

// caStatus is the part of `warden ca status --json` the tests read.
type caStatus struct {
	Issuers []struct {
		Fingerprint string `json:"fingerprint"`
		State       string `json:"state"`
	} `json:"issuers"`
	Rotation *struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		Reason    string `json:"reason"`
		OldIssuer string `json:"old_issuer"`
		NewIssuer string `json:"new_issuer"`
	} `json:"rotation"`
	Devices map[string]int `json:"devices"`
	Total   int            `json:"total"`
}

func readCAStatus(t testing.TB, s *wardentest.Server) caStatus {
	t.Helper()
	var st caStatus
	if err := json.Unmarshal([]byte(s.MustWarden("ca", "status", "--json")), &st); err != nil {
		t.Fatal(err)
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

// fleetDevice is one SDK device of a rotation test, with what it went
// through.
type fleetDevice struct {
	id  string
	c   wardentest.Creds
	cl  *device.Client
	mu  sync.Mutex
	cur tls.Certificate // the certificate it stored (OnCertificate), as a device writes it to flash
	// downAt is when the connection was last lost; gaps are the offline
	// periods that ended.
	downAt time.Time
	gaps   []time.Duration
	downs  int
}

func (d *fleetDevice) config(s *wardentest.Server) func(*device.Config) {
	return func(cfg *device.Config) {
		cfg.OnConnectionDown = func(error) {
			d.mu.Lock()
			d.downAt = time.Now()
			d.downs++
			d.mu.Unlock()
		}
		cfg.OnConnectionUp = func() {
			d.mu.Lock()
			if !d.downAt.IsZero() {
				d.gaps = append(d.gaps, time.Since(d.downAt))
				d.downAt = time.Time{}
			}
			d.mu.Unlock()
		}
		cfg.OnCertificate = func(c tls.Certificate) {
			d.mu.Lock()
			d.cur = c
			d.mu.Unlock()
		}
		cfg.ConnectTimeout = 20 * time.Second
	}
}

func (d *fleetDevice) current() tls.Certificate {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur
}

// provisionFleet provisions n devices in one batch.
func provisionFleet(t *testing.T, s *wardentest.Server, n int) []*fleetDevice {
	t.Helper()
	dir := t.TempDir()
	ids := strings.Fields(s.MustWarden("device", "provision", "--count", fmt.Sprint(n), "--model", "rot", "--out", dir))
	if len(ids) != n {
		t.Fatalf("provisioned %d devices, want %d", len(ids), n)
	}
	out := make([]*fleetDevice, n)
	for i, id := range ids {
		c := wardentest.Creds{ID: id, Cert: filepath.Join(dir, id+".crt"), Key: filepath.Join(dir, id+".key"), CA: filepath.Join(dir, "ca.crt")}
		cert, _ := c.TLS(t)
		out[i] = &fleetDevice{id: id, c: c, cur: cert}
	}
	return out
}

// connectFleet connects devices with a few goroutines.
func connectFleet(t *testing.T, s *wardentest.Server, devs []*fleetDevice) {
	t.Helper()
	var wg sync.WaitGroup
	next := make(chan *fleetDevice)
	for range 16 {
		wg.Go(func() {
			for d := range next {
				d.cl = wardentest.ConnectSDK(t, s, d.c, d.config(s))
			}
		})
	}
	for _, d := range devs {
		next <- d
	}
	close(next)
	wg.Wait()
}

// waitRotation waits until the latest rotation is in state.
func waitRotation(t *testing.T, s *wardentest.Server, state string, within time.Duration) caStatus {
	t.Helper()
	var st caStatus
	defer func() {
		if t.Failed() {
			t.Logf("last status: %+v %v", st.Rotation, st.Devices)
		}
	}()
	wardentest.Eventually(t, within, "rotation "+state, func() bool {
		st = readCAStatus(t, s)
		return st.Rotation != nil && st.Rotation.State == state
	})
	return st
}

// A CA rotation of a fleet of SDK devices: every device ends on the new
// issuing CA with the key it always had, no device is offline for longer
// than one reconnection, and the old issuing CA is retired once all have
// switched: its certificates are refused from then on.
func TestCARotationFleet(t *testing.T) {
	n := 500
	if testing.Short() {
		n = 100
	}
	s := wardentest.Start(t, t.TempDir())
	devs := provisionFleet(t, s, n)
	oldIssuing := wardentest.IssuingCA(t, s.Data)
	start := time.Now()
	connectFleet(t, s, devs)
	t.Logf("%d devices connected in %s", n, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out := s.MustWarden("ca", "rotate", "--grace", "1h")
	if !strings.Contains(out, "replaced by") {
		t.Fatalf("ca rotate:\n%s", out)
	}
	st := waitRotation(t, s, "completed", 90*time.Second)
	t.Logf("rotation of %d devices completed in %s: %s", n, time.Since(start).Round(time.Millisecond), st.Rotation.Reason)
	if st.Devices["switched"] != n || st.Total != n {
		t.Fatalf("rotation counts %v of %d, want all %d switched", st.Devices, st.Total, n)
	}
	if st.issuerState(st.Rotation.OldIssuer) != "retired" || st.issuerState(st.Rotation.NewIssuer) != "current" {
		t.Fatalf("issuers after the rotation: %+v", st.Issuers)
	}
	newIssuing := wardentest.IssuingCA(t, s.Data)
	if pki.Fingerprint(newIssuing) != st.Rotation.NewIssuer {
		t.Fatal("issuing.crt is not the rotation's new issuer")
	}

	var worst time.Duration
	for _, d := range devs {
		cur := d.current()
		if err := cur.Leaf.CheckSignatureFrom(newIssuing); err != nil {
			t.Fatalf("device %s stored a certificate not signed by the new issuing CA: %v", d.id, err)
		}
		first, _ := d.c.TLS(t)
		if !first.Leaf.PublicKey.(interface{ Equal(x crypto.PublicKey) bool }).Equal(cur.Leaf.PublicKey) {
			t.Fatalf("device %s: the rotation changed its key", d.id)
		}
		if got := d.cl.CertificateStats().Rotations; got != 1 {
			t.Fatalf("device %s installed %d rotation deliveries, want 1", d.id, got)
		}
		d.mu.Lock()
		if d.downs > 1 {
			t.Errorf("device %s lost its connection %d times, want one switch", d.id, d.downs)
		}
		for _, g := range d.gaps {
			worst = max(worst, g)
		}
		stillDown := !d.downAt.IsZero()
		d.mu.Unlock()
		if stillDown {
			t.Errorf("device %s is offline after the rotation", d.id)
		}
	}
	t.Logf("longest offline period of a device during the rotation: %s", worst.Round(time.Millisecond))
	// One reconnection: a TLS handshake and CONNECT, queued behind the
	// fleet's other switches on two cores, with generous slack for -race.
	if worst > 10*time.Second {
		t.Errorf("a device was offline for %s, longer than a reconnection", worst)
	}
	if cur := devs[0].current(); cur.Leaf.CheckSignatureFrom(oldIssuing) == nil {
		t.Fatal("test bug: the old issuer signed the new certificate")
	}
	// The old certificates are refused now that the old issuer is retired.
	if !handshakeRefused(t, s.MQTTS, devs[0].c, devs[0].c.CA) {
		t.Error("a certificate of the retired issuing CA was accepted")
	}
	if v := s.Metric(t, "warden_rotation_switched_total"); v != float64(n) {
		t.Errorf("warden_rotation_switched_total = %v, want %d", v, n)
	}
	if !s.AuditContains(`"action":"ca.rotate"`) || !s.AuditContains(`"action":"ca.rotation-complete"`, `"reason":"every device switched"`) {
		t.Error("rotation start and completion are not in the audit log")
	}
}

// A server killed with SIGKILL in the middle of a rotation resumes it on
// restart: every device ends on the new issuing CA, including one that was
// offline throughout and connects within the grace period, and every
// certificate a device holds is one the registry knows.
func TestCARotationSurvivesKill(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	devs := provisionFleet(t, s, 120)
	online, offline := devs[:110], devs[110:]
	connectFleet(t, s, online)

	s.MustWarden("ca", "rotate", "--grace", "1h", "--no-wait")
	time.Sleep(150 * time.Millisecond) // into the re-issuing
	s.Kill()
	s.Restart()
	// The SDK devices were configured with the old address; reconnect them
	// to the new one (the port changed), keeping the certificate they hold.
	for _, d := range online {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = d.cl.Close(ctx)
		cancel()
	}
	reconnect := func(ds []*fleetDevice) {
		for _, d := range ds {
			cur := d.current()
			c := d.c
			d.cl = wardentest.ConnectSDK(t, s, c, d.config(s), func(cfg *device.Config) { cfg.Certificate = cur })
		}
	}
	reconnect(online)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st := readCAStatus(t, s)
		if st.Devices["switched"] == len(online) {
			break
		}
		if time.Now().After(deadline) {
			for _, d := range online[:5] {
				t.Logf("%s: %+v", d.id, d.cl.CertificateStats())
				for _, l := range strings.Split(s.Log(), "\n") {
					if strings.Contains(l, d.id) {
						t.Log(l)
					}
				}
			}
			t.Fatalf("the online devices did not all switch after the restart: %v", st.Devices)
		}
	}
	if st := readCAStatus(t, s); st.Rotation.State != "running" {
		t.Fatalf("rotation is %s with %d devices still offline", st.Rotation.State, len(offline))
	}
	// The offline devices come online with their old certificate, inside
	// the grace period, take their delivery and switch.
	reconnect(offline)
	st := waitRotation(t, s, "completed", 60*time.Second)
	if st.Devices["switched"] != len(devs) {
		t.Fatalf("after the restart: %v", st.Devices)
	}
	newIssuing := wardentest.IssuingCA(t, s.Data)
	for i, d := range devs {
		cur := d.current()
		if err := cur.Leaf.CheckSignatureFrom(newIssuing); err != nil {
			t.Fatalf("device %s holds a certificate of another issuer", d.id)
		}
		// Every device switched, so the broker authenticated each one's
		// current certificate against the registry; a few are checked by
		// hand as well (each is a CLI run, slow under -race).
		if i%12 != 0 {
			continue
		}
		var show struct {
			Credentials []struct {
				Serial    string     `json:"serial"`
				RevokedAt *time.Time `json:"revoked_at"`
			} `json:"credentials"`
		}
		out := s.MustWarden("device", "show", d.id, "--json")
		if err := json.Unmarshal([]byte(out), &show); err != nil {
			t.Fatalf("device show: %v\n%s", err, out)
		}
		serial := pki.SerialHex(cur.Leaf.SerialNumber)
		found := false
		for _, c := range show.Credentials {
			found = found || (c.Serial == serial && c.RevokedAt == nil)
		}
		if !found {
			t.Fatalf("device %s holds certificate %s, which the registry does not know:\n%s", d.id, serial, out)
		}
	}
}

// A device that misses the grace period is refused with its old
// certificate and recovers through a recovery enrollment.
func TestCARotationMissedGrace(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	devs := provisionFleet(t, s, 2)
	connectFleet(t, s, devs[:1])
	late := devs[1]

	s.MustWarden("ca", "rotate", "--grace", "3s", "--no-wait")
	st := waitRotation(t, s, "completed", 30*time.Second)
	if !strings.Contains(st.Rotation.Reason, "grace period ended") || st.Devices["switched"] != 1 {
		t.Fatalf("rotation ended: %q %v", st.Rotation.Reason, st.Devices)
	}
	if !handshakeRefused(t, s.MQTTS, late.c, late.c.CA) {
		t.Fatal("a device that missed the grace period connected with its old certificate")
	}

	// Recovery: the operator re-arms the device with a fresh enrollment
	// secret; the device enrolls with its own key, as on first contact.
	secretFile := filepath.Join(t.TempDir(), "secret.json")
	s.MustWarden("device", "preregister", late.id, "--recover", "--enroll-secret-out", secretFile)
	sf := readSecret(t, secretFile)
	first, roots := late.c.TLS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := "https://localhost:" + s.API[strings.LastIndexByte(s.API, ':')+1:]
	cert, err := device.Enroll(ctx, device.EnrollConfig{Server: base, RootCAs: roots, DeviceID: late.id,
		Key: first.PrivateKey.(crypto.Signer), Secret: sf.Secret})
	if err != nil {
		t.Fatalf("recovery enrollment: %v", err)
	}
	if err := cert.Leaf.CheckSignatureFrom(wardentest.IssuingCA(t, s.Data)); err != nil {
		t.Fatalf("the recovered certificate is not from the current issuing CA: %v", err)
	}
	cl := wardentest.ConnectSDK(t, s, late.c, func(cfg *device.Config) { cfg.Certificate = cert })
	if err := cl.Publish(ctx, "private/"+late.id+"/up/hello", []byte("back"), 1, false); err != nil {
		t.Fatalf("publish after recovery: %v", err)
	}
	// The secret is single use.
	if _, err := device.Enroll(ctx, device.EnrollConfig{Server: base, RootCAs: roots, DeviceID: late.id,
		Key: first.PrivateKey.(crypto.Signer), Secret: sf.Secret}); err == nil {
		t.Fatal("a recovery secret enrolled twice")
	}
}

// Revoking an old issuing CA cuts at once every connection still made with
// a certificate it signed; such a device cannot connect again with it.
func TestRevokeIssuerCutsItsDevices(t *testing.T) {
	s := wardentest.Start(t, t.TempDir())
	stuck := s.AddDevice("stuck-1")
	rc := wardentest.MustConnectRaw(t, s.MQTTS, stuck, wardentest.RawOpts{Clean: true}) // never takes a delivery
	s.MustWarden("ca", "rotate", "--grace", "1h", "--no-wait")
	st := readCAStatus(t, s)
	old := st.Rotation.OldIssuer

	// The current issuing CA cannot be revoked.
	if _, errOut, err := s.Warden("ca", "revoke-issuer", st.Rotation.NewIssuer, "--reason", "test"); err == nil || !strings.Contains(errOut, "current") {
		t.Fatalf("revoking the current issuing CA: %v\n%s", err, errOut)
	}
	select {
	case <-rc.Down:
		t.Fatal("the device was cut before the revocation")
	case <-time.After(200 * time.Millisecond):
	}
	out := s.MustWarden("ca", "revoke-issuer", old[:12], "--reason", "key leaked")
	if !strings.Contains(out, "1 connections cut") {
		t.Fatalf("revoke-issuer:\n%s", out)
	}
	select {
	case <-rc.Down:
	case <-time.After(5 * time.Second):
		t.Fatal("a device using the revoked issuing CA stayed connected")
	}
	if !handshakeRefused(t, s.MQTTS, stuck, stuck.CA) {
		t.Fatal("a certificate of the revoked issuing CA was accepted")
	}
	st = waitRotation(t, s, "completed", 15*time.Second)
	if st.issuerState(old) != "revoked" {
		t.Fatalf("old issuer is %q", st.issuerState(old))
	}
	if v := s.Metric(t, "warden_rotation_connections_cut_total", `cause="issuer-revoked"`); v != 1 {
		t.Errorf("connections cut metric = %v", v)
	}
	if !s.AuditContains(`"action":"ca.revoke-issuer"`, `"reason":"key leaked"`) {
		t.Error("the revocation is not in the audit log")
	}
}
