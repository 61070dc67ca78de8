package apiclient_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/enrollproto"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/api"
	"github.com/warden-iot/warden/internal/apiclient"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/monitor"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/onboard/claimtoken"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// server is a real API over a real store and CA, served on a real admin
// socket, as `warden serve` serves it.
type server struct {
	st     *sqlite.Store
	reg    *registry.Registry
	ca     *pki.Authority
	tokens *apitoken.Service
	onb    *onboard.Service
	mon    *monitor.Monitor
	local  admin.Local // the same services, in process
	api    *api.API
	socket string
	client *apiclient.Client // over the socket
	fwKey  crypto.Signer     // a trusted release key
}

func startServer(t *testing.T) *server {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	_, _ = rand.Read(master)
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{}
	if s.ca, err = pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	if s.st, err = sqlite.Open(ctx, filepath.Join(dir, "warden.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.st.Close() })
	quiet := slog.New(slog.DiscardHandler)
	s.reg = registry.New(s.st, s.ca, registry.Options{Logger: quiet, Sealer: ks})
	otaSvc, err := ota.New(ota.Options{Store: s.st, Blobs: ota.FileBlobs{Dir: filepath.Join(dir, "firmware")}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := rotation.New(rotation.Options{Store: s.st, CA: s.ca, Registry: s.reg, Logger: quiet,
		Chain: func() []*x509.Certificate { return []*x509.Certificate{s.ca.Issuing()} }})
	if err != nil {
		t.Fatal(err)
	}
	s.tokens = apitoken.New(s.st, apitoken.Options{Logger: quiet})
	key, err := claimtoken.LoadOrCreate(filepath.Join(dir, "claim.key"), ks)
	if err != nil {
		t.Fatal(err)
	}
	if s.onb, err = onboard.New(onboard.Options{Registry: s.reg, Store: s.st, CA: s.ca, Keystore: ks, ClaimKey: key, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	if s.mon, err = monitor.New(ctx, monitor.Options{Store: s.st, Config: config.DefaultMonitor(), Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	// The server's rekey also sends the new key to the device; here it is
	// only issued.
	rekey := func(ctx context.Context, id string) (uint32, error) {
		sec, err := s.reg.BeginRekey(ctx, id)
		clear(sec.Secret)
		return sec.Epoch, err
	}
	s.local = admin.Local{Registry: s.reg, OTA: otaSvc, Rotation: rot, RekeyFunc: rekey}
	if s.api, err = api.New(api.Options{
		Tokens: s.tokens, Admin: s.local, Issuers: s.ca, Firmware: s.st, Alerts: s.mon, Seen: s.mon,
		Onboarding: s.onb, Claims: s.reg, Enrollments: s.st, TokenAdmin: s.tokens, Quarantines: s.mon,
		Logger: quiet,
	}); err != nil {
		t.Fatal(err)
	}

	// Unix socket paths are short (108 bytes); t.TempDir's may not be.
	sockDir, err := os.MkdirTemp("", "wd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s.socket = filepath.Join(sockDir, "warden.sock")
	ln, err := admin.Listen(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.api.LocalHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	if s.client, err = apiclient.DialSocket(ctx, s.socket); err != nil || s.client == nil {
		t.Fatalf("DialSocket: %v, %v", s.client, err)
	}

	if s.fwKey, err = firmware.GenerateKey(firmware.KeyECDSAP256); err != nil {
		t.Fatal(err)
	}
	pub, err := firmware.EncodePublicKeyPEM(s.fwKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.local.TrustKey(ctx, pub, "test"); err != nil {
		t.Fatal(err)
	}
	return s
}

// signedImage returns a new image for model "sensor" and its release
// statement, signed with the server's trusted key.
func (s *server) signedImage(t *testing.T, version string, sequence uint64) (img, stmt []byte) {
	t.Helper()
	ver, err := firmware.ParseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 4000)
	_, _ = rand.Read(payload)
	if img, err = firmware.Sign(payload, s.fwKey, firmware.SignOptions{Version: ver, SecurityCounter: 1}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	stmt, err = firmware.SignStatement(firmware.Statement{Model: "sensor", Version: ver, SecurityCounter: 1,
		ImageSHA256: sha256.Sum256(img), ImageSize: int64(len(img)), Sequence: sequence, IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, s.fwKey)
	if err != nil {
		t.Fatal(err)
	}
	return img, stmt
}

func csrFor(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, cn)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// sameJSON fails unless a and b encode alike: what a caller of either
// service would see.
func sameJSON(t *testing.T, what string, a, b any) {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	// A nil list and an empty one hold the same: nothing.
	empty := func(j []byte) bool { return string(j) == "null" || string(j) == "[]" }
	if !bytes.Equal(ja, jb) && !(empty(ja) && empty(jb)) {
		t.Errorf("%s differs:\n client %s\n local  %s", what, ja, jb)
	}
}

// errKinds are the error kinds callers of admin.Service test for.
var errKinds = []error{store.ErrNotFound, store.ErrConflict, registry.ErrInvalid, ota.ErrRefused}

// sameKind fails unless both errors are of kind want, and of no other.
func sameKind(t *testing.T, what string, want, client, local error) {
	t.Helper()
	for name, err := range map[string]error{"client": client, "local": local} {
		if err == nil {
			t.Errorf("%s: %s succeeded, want %v", what, name, want)
			continue
		}
		for _, k := range errKinds {
			if errors.Is(err, k) != (k == want) {
				t.Errorf("%s: %s error %q: errors.Is(%v) = %v", what, name, err, k, errors.Is(err, k))
			}
		}
	}
}

func TestDialSocket(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "wd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if c, err := apiclient.DialSocket(ctx, filepath.Join(dir, "none.sock")); c != nil || err != nil {
		t.Errorf("no socket: %v, %v", c, err)
	}
	// A socket left behind by a killed server.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if c, err := apiclient.DialSocket(ctx, stale); c != nil || err != nil {
		t.Errorf("stale socket: %v, %v", c, err)
	}

	s := startServer(t)
	who, err := s.client.WhoAmI(ctx)
	if err != nil || who != (api.WhoAmI{TokenID: api.LocalTokenID, Role: apitoken.RoleAdmin, User: "operator"}) {
		t.Errorf("WhoAmI on the socket: %+v, %v", who, err)
	}
	if s.client.String() != "admin socket" {
		t.Errorf("String() = %q", s.client.String())
	}
}

// The client implements admin.Service as admin.Local does: the same
// results, the same error kinds, across the socket.
func TestServiceLikeLocal(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	c, l := s.client, s.local
	var svc admin.Service = c

	// Devices.
	is, err := svc.AddDevice(ctx, registry.DeviceSpec{ID: "c-1", Model: "sensor", Tags: map[string]string{"site": "lyon"}}, csrFor(t, "c-1"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := l.Device(ctx, "c-1")
	if err != nil || len(info.Credentials) != 1 {
		t.Fatalf("local view of c-1: %+v %v", info, err)
	}
	if b, _ := pem.Decode([]byte(is.CertificatePEM)); is.ID != "c-1" || b == nil || !bytes.Equal(b.Bytes, info.Credentials[0].Certificate) {
		t.Errorf("issued %+v", is)
	}
	if _, err := l.AddDevice(ctx, registry.DeviceSpec{ID: "l-1", Model: "sensor", Tags: map[string]string{"site": "oslo"}}, csrFor(t, "l-1")); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c-1", "l-1"} {
		ci, err := c.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		li, _ := l.Device(ctx, id)
		sameJSON(t, "device "+id, ci.Device, li.Device)
		if len(ci.Credentials) != 1 || ci.Credentials[0].Serial != li.Credentials[0].Serial || ci.Credentials[0].Fingerprint != li.Credentials[0].Fingerprint ||
			!bytes.Equal(ci.Credentials[0].Certificate, li.Credentials[0].Certificate) || !ci.Credentials[0].NotAfter.Equal(li.Credentials[0].NotAfter) {
			t.Errorf("credentials of %s: client %+v local %+v", id, ci.Credentials, li.Credentials)
		}
	}
	for _, f := range []store.DeviceFilter{{}, {Tags: map[string]string{"site": "lyon"}}, {Model: "sensor", Limit: 1}, {After: "c-1"}, {State: store.StateDisabled}} {
		cl, err := c.ListDevices(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		ll, _ := l.ListDevices(ctx, f)
		sameJSON(t, fmt.Sprintf("ListDevices(%+v)", f), cl, ll)
	}

	// Provisioning in two steps.
	csr := csrFor(t, "c-2")
	issued, err := c.IssueDevice(ctx, registry.DeviceSpec{ID: "c-2"}, csr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Device(ctx, "c-2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("IssueDevice registered c-2: %v", err)
	}
	d, err := c.RegisterDevice(ctx, registry.DeviceSpec{ID: "c-2", Model: "sensor"}, csr, issued.CertificatePEM)
	if err != nil {
		t.Fatal(err)
	}
	li, _ := l.Device(ctx, "c-2")
	sameJSON(t, "registered c-2", d, li.Device)

	// State changes answer what the registry then holds.
	for _, step := range []struct {
		name string
		do   func() (store.Device, error)
	}{
		{"disable", func() (store.Device, error) { return c.Disable(ctx, "c-1", "maintenance") }},
		{"enable", func() (store.Device, error) { return c.Enable(ctx, "c-1") }},
		{"tags", func() (store.Device, error) { return c.SetTags(ctx, "c-1", map[string]string{"room": "lab"}) }},
		{"no tags", func() (store.Device, error) { return c.SetTags(ctx, "c-2", nil) }},
		{"revoke", func() (store.Device, error) { return c.Revoke(ctx, "c-2", "stolen") }},
	} {
		got, err := step.do()
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		li, _ := l.Device(ctx, got.ID)
		sameJSON(t, step.name, got, li.Device)
	}

	// The same error kinds across the socket.
	errCases := []struct {
		name string
		want error
		do   func(admin.Service) error
	}{
		{"add a registered ID", store.ErrConflict, func(v admin.Service) error {
			_, err := v.AddDevice(ctx, registry.DeviceSpec{ID: "c-1"}, csrFor(t, "c-1"))
			return err
		}},
		{"add a bad ID", registry.ErrInvalid, func(v admin.Service) error {
			_, err := v.AddDevice(ctx, registry.DeviceSpec{ID: "a/b"}, csrFor(t, "a"))
			return err
		}},
		{"add with another ID's CSR", registry.ErrInvalid, func(v admin.Service) error {
			_, err := v.AddDevice(ctx, registry.DeviceSpec{ID: "c-9"}, csrFor(t, "c-8"))
			return err
		}},
		{"show a missing device", store.ErrNotFound, func(v admin.Service) error { _, err := v.Device(ctx, "nope"); return err }},
		{"disable a missing device", store.ErrNotFound, func(v admin.Service) error { _, err := v.Disable(ctx, "nope", ""); return err }},
		{"enable a revoked device", registry.ErrInvalid, func(v admin.Service) error { _, err := v.Enable(ctx, "c-2"); return err }},
		{"bad tags", registry.ErrInvalid, func(v admin.Service) error {
			_, err := v.SetTags(ctx, "c-1", map[string]string{"Bad Key": "x"})
			return err
		}},
		{"revoke a missing service", store.ErrNotFound, func(v admin.Service) error { _, err := v.RevokeService(ctx, "nope", ""); return err }},
		{"untrust a missing key", store.ErrNotFound, func(v admin.Service) error {
			_, err := v.UntrustKey(ctx, strings.Repeat("0", 64))
			return err
		}},
		{"status of a missing rollout", store.ErrNotFound, func(v admin.Service) error { _, err := v.RolloutStatus(ctx, "nope"); return err }},
		{"an envelope for a missing device", store.ErrNotFound, func(v admin.Service) error {
			_, err := v.EnableEnvelope(ctx, "nope", "ccm-8", false)
			return err
		}},
	}
	for _, tc := range errCases {
		sameKind(t, tc.name, tc.want, tc.do(c), tc.do(l))
	}
	// An unknown issuing CA is pki's own error in process and a 404 on the
	// wire, which the client reads as store.ErrNotFound.
	if _, err := l.RetireIssuer(ctx, strings.Repeat("ab", 32)); !errors.Is(err, pki.ErrUnknownIssuer) {
		t.Errorf("local: retire a missing issuer: %v", err)
	}
	if _, err := c.RetireIssuer(ctx, strings.Repeat("ab", 32)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("client: retire a missing issuer: %v", err)
	}

	// Services.
	if _, err := c.AddService(ctx, "billing", "reader", csrFor(t, "billing")); err != nil {
		t.Fatal(err)
	}
	_, cerr := c.AddService(ctx, "billing", "reader", csrFor(t, "billing"))
	_, lerr := l.AddService(ctx, "billing", "reader", csrFor(t, "billing"))
	sameKind(t, "a service twice", store.ErrConflict, cerr, lerr)
	cs, err := c.ListServices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := l.ListServices(ctx)
	sameJSON(t, "services", cs, ls)
	rs, err := c.RevokeService(ctx, "billing", "retired")
	if err != nil || rs.State != store.StateRevoked || rs.StateReason != "retired" {
		t.Errorf("revoked service %+v, %v", rs, err)
	}

	// Envelope keys.
	b, err := c.EnableEnvelope(ctx, "l-1", "ccm-8", true)
	if err != nil || b.DeviceID != "l-1" || len(b.Secret) != 16 || !b.Required {
		t.Fatalf("envelope %+v, %v", b, err)
	}
	if epoch, err := c.Rekey(ctx, "l-1"); err != nil || epoch != b.Epoch+1 {
		t.Errorf("rekey: epoch %d, %v", epoch, err)
	}
}

func TestFirmwareAndCALikeLocal(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	c, l := s.client, s.local
	for _, id := range []string{"s-1", "s-2", "s-3"} {
		if _, err := l.AddDevice(ctx, registry.DeviceSpec{ID: id, Model: "sensor"}, csrFor(t, id)); err != nil {
			t.Fatal(err)
		}
	}

	// Keys.
	key, err := firmware.GenerateKey(firmware.KeyEd25519)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := firmware.EncodePublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	k, err := c.TrustKey(ctx, pub, "ci")
	if err != nil {
		t.Fatal(err)
	}
	ck, err := c.ReleaseKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lk, _ := l.ReleaseKeys(ctx)
	sameJSON(t, "release keys", ck, lk)
	if u, err := c.UntrustKey(ctx, k.ID); err != nil || !u.Revoked() {
		t.Errorf("untrust %+v, %v", u, err)
	}
	_, cerr := c.TrustKey(ctx, pub, "again")
	_, lerr := l.TrustKey(ctx, pub, "again")
	sameKind(t, "trust a revoked key", ota.ErrRefused, cerr, lerr)

	// Images, streamed to the server.
	img, stmt := s.signedImage(t, "1.0.0+1", 1)
	up, err := c.UploadImage(ctx, stmt, bytes.NewReader(img))
	if err != nil || up.Version != "1.0.0+1" || up.Size != int64(len(img)) {
		t.Fatalf("upload %+v, %v", up, err)
	}
	other, otherStmt := s.signedImage(t, "1.0.1+1", 2)
	_, cerr = c.UploadImage(ctx, stmt, bytes.NewReader(other))
	_, lerr = l.UploadImage(ctx, otherStmt, bytes.NewReader(img))
	sameKind(t, "an image that is not its statement's", ota.ErrRefused, cerr, lerr)
	ci, err := c.Images(ctx, "sensor")
	if err != nil {
		t.Fatal(err)
	}
	limgs, _ := l.Images(ctx, "sensor")
	sameJSON(t, "images", ci, limgs)

	// Rollouts.
	rc, err := c.CreateRollout(ctx, ota.RolloutSpec{Image: up.SHA256[:10], Stages: []int{50, 100}})
	if err != nil || rc.Summary.Members != 3 {
		t.Fatalf("rollout %+v, %v", rc, err)
	}
	_, cerr = c.CreateRollout(ctx, ota.RolloutSpec{Image: up.SHA256})
	_, lerr = l.CreateRollout(ctx, ota.RolloutSpec{Image: up.SHA256})
	sameKind(t, "every device busy", registry.ErrInvalid, cerr, lerr)
	crs, err := c.Rollouts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lrs, _ := l.Rollouts(ctx)
	sameJSON(t, "rollouts", crs, lrs)
	cst, err := c.RolloutStatus(ctx, rc.Rollout.ID)
	if err != nil {
		t.Fatal(err)
	}
	lst, _ := l.RolloutStatus(ctx, rc.Rollout.ID)
	sameJSON(t, "rollout status", cst, lst)
	for _, f := range []store.RolloutDeviceFilter{{}, {Limit: 2}, {After: "s-1"}, {State: store.DevicePending}} {
		cd, err := c.RolloutDevices(ctx, rc.Rollout.ID, f)
		if err != nil {
			t.Fatal(err)
		}
		ld, _ := l.RolloutDevices(ctx, rc.Rollout.ID, f)
		sameJSON(t, fmt.Sprintf("rollout devices %+v", f), cd, ld)
	}
	if r, err := c.PauseRollout(ctx, rc.Rollout.ID, "look"); err != nil || r.State != store.RolloutPaused {
		t.Errorf("pause %+v, %v", r, err)
	}
	_, cerr = c.PauseRollout(ctx, rc.Rollout.ID, "again")
	_, lerr = l.PauseRollout(ctx, rc.Rollout.ID, "again")
	sameKind(t, "pause a paused rollout", store.ErrConflict, cerr, lerr)
	if r, err := c.ResumeRollout(ctx, rc.Rollout.ID); err != nil || r.State != store.RolloutRunning {
		t.Errorf("resume %+v, %v", r, err)
	}
	if r, err := c.AbortRollout(ctx, rc.Rollout.ID, "bad"); err != nil || r.State != store.RolloutAborted {
		t.Errorf("abort %+v, %v", r, err)
	}

	// The CA.
	cca, err := c.CAStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lca, _ := l.CAStatus(ctx)
	sameJSON(t, "CA status", cca, lca)
	old := cca.Issuers[0].Fingerprint
	rot, err := c.RotateCA(ctx, time.Hour)
	if err != nil || rot.OldIssuer != old {
		t.Fatalf("rotate %+v, %v", rot, err)
	}
	_, cerr = c.RotateCA(ctx, time.Hour)
	_, lerr = l.RotateCA(ctx, time.Hour)
	sameKind(t, "a second rotation", store.ErrConflict, cerr, lerr)
	_, cerr = c.RetireIssuer(ctx, rot.NewIssuer)
	_, lerr = l.RetireIssuer(ctx, rot.NewIssuer)
	sameKind(t, "retire the current issuer", registry.ErrInvalid, cerr, lerr)
	ch, err := c.RetireIssuer(ctx, old)
	if err != nil || ch.Status.Issuers[len(ch.Status.Issuers)-1].State != "retired" {
		t.Errorf("retire %+v, %v", ch, err)
	}
	if ch, err := c.RevokeIssuer(ctx, old, "leaked"); err != nil || ch.Status.Issuers[len(ch.Status.Issuers)-1].State != "revoked" {
		t.Errorf("revoke %+v, %v", ch, err)
	}
}

func TestOnboardingOverTheSocket(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	c := s.client

	// Preregistration: the secret file, which enrolls the device.
	f, err := c.Preregister(ctx, api.EnrollmentRequest{DeviceID: "p-1", Model: "meter"})
	if err != nil || f.DeviceID != "p-1" || len(f.Secret) != enrollproto.SecretSize {
		t.Fatalf("preregister %+v, %v", f, err)
	}
	csr := csrFor(t, "p-1")
	if _, _, err := s.onb.Enroll(ctx, onboard.Request{CSR: csr, Proof: enrollproto.Proof(f.Secret, "p-1", csr), Via: "est"}); err != nil {
		t.Fatalf("enroll with the secret: %v", err)
	}
	if _, err := c.Preregister(ctx, api.EnrollmentRequest{DeviceID: "p-1"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("preregister a registered device: %v", err)
	}
	if err := c.Unregister(ctx, "p-1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("unregister a used enrollment: %v", err)
	}
	if _, err := c.Preregister(ctx, api.EnrollmentRequest{DeviceID: "p-1", Recovery: true}); err != nil {
		t.Errorf("recovery: %v", err)
	}
	if _, err := c.Preregister(ctx, api.EnrollmentRequest{DeviceID: "nope", Recovery: true}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("recovery of nothing: %v", err)
	}
	for _, id := range []string{"p-2", "p-3"} {
		if _, err := c.Preregister(ctx, api.EnrollmentRequest{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Unregister(ctx, "p-3"); err != nil {
		t.Fatal(err)
	}
	if err := c.Unregister(ctx, "p-3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unregister twice: %v", err)
	}

	// Claim certificates with allow-lists longer than one request body.
	many := func(prefix string, n int) []string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("%s-%036d", prefix, i)
		}
		return ids
	}
	allow := many("a", 3000)
	created, err := c.CreateClaimCert(ctx, api.ClaimCertRequest{Name: "line-7", CSR: csrFor(t, "line-7"), Allow: allow, Model: "meter"})
	if err != nil {
		t.Fatal(err)
	}
	if created.ClaimCert.Unused != len(allow) || !strings.Contains(created.ChainPEM, "BEGIN CERTIFICATE") {
		t.Errorf("created %+v", created.ClaimCert)
	}
	more := many("b", 2000)
	cc, err := c.AllowClaim(ctx, "line-7", api.AllowRequest{Allow: more})
	if err != nil || cc.Unused != len(allow)+len(more) {
		t.Fatalf("allow: %+v, %v", cc, err)
	}
	if _, err := c.AllowClaim(ctx, "line-7", api.AllowRequest{Allow: []string{allow[0]}}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("allow twice: %v", err)
	}
	if _, err := c.AllowClaim(ctx, "nope", api.AllowRequest{Allow: []string{"x-1"}}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("allow on nothing: %v", err)
	}
	// A list refused in its second part leaves no certificate behind.
	clash := append(many("c", 2000), allow[5])
	if _, err := c.CreateClaimCert(ctx, api.ClaimCertRequest{Name: "line-8", CSR: csrFor(t, "line-8"), Allow: clash}); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "revoked again") {
		t.Errorf("a clashing list: %v", err)
	}
	certs, err := c.ClaimCerts(ctx)
	if err != nil || len(certs) != 2 || certs[0].Unused != 5000 || certs[1].Name != "line-8" || certs[1].State != "revoked" || certs[1].Unused != 0 {
		t.Fatalf("claim certs %+v, %v", certs, err)
	}
	var all []string
	for fl := (store.EnrollmentFilter{Claim: "line-7", Unused: true, Limit: store.MaxListLimit}); ; {
		page, err := c.Enrollments(ctx, fl)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Enrollments {
			all = append(all, e.DeviceID)
		}
		if page.NextAfter == "" {
			break
		}
		fl.After = page.NextAfter
	}
	if want := append(slices.Clone(allow), more...); !slices.Equal(all, want) {
		t.Errorf("%d enrollments listed, want %d", len(all), len(want))
	}
	if rc, err := c.RevokeClaimCert(ctx, "line-7", "closed"); err != nil || rc.State != "revoked" || rc.Reason != "closed" {
		t.Errorf("revoke %+v, %v", rc, err)
	}

	// Tokens.
	tok, err := c.CreateToken(ctx, apitoken.RoleViewer, "vera", "dash", 1500*time.Millisecond)
	if err != nil || tok.ExpiresAt == nil || tok.ExpiresAt.Sub(tok.CreatedAt) != 2*time.Second {
		t.Fatalf("token %+v, %v", tok, err)
	}
	if _, err := s.tokens.Authenticate(ctx, tok.Secret); err != nil {
		t.Errorf("the new token: %v", err)
	}
	if _, err := c.CreateToken(ctx, "root", "x", "", 0); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("a bad role: %v", err)
	}
	ts, err := c.Tokens(ctx)
	if err != nil || len(ts) != 1 || ts[0].ID != tok.ID {
		t.Errorf("tokens %+v, %v", ts, err)
	}
	if r, err := c.RevokeToken(ctx, tok.ID); err != nil || r.State != "revoked" {
		t.Errorf("revoke token %+v, %v", r, err)
	}
	if _, err := c.RevokeToken(ctx, "0123456789abcdef"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke a missing token: %v", err)
	}

	// Alerts and quarantines.
	if err := s.st.CreateAlert(ctx, store.Alert{ID: "00000000000000a1", Detector: "acl_denials", Severity: store.SeverityWarning, Device: "p-1",
		Summary: "7 ACL denials in 1m", Response: store.ResponseQuarantine, Count: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.mon.Quarantine(ctx, "p-1", "alert 00000000000000a1", "monitor"); err != nil {
		t.Fatal(err)
	}
	qs, err := c.Quarantined(ctx)
	if err != nil || len(qs) != 1 || qs[0].DeviceID != "p-1" || qs[0].Reason != "alert 00000000000000a1" {
		t.Fatalf("quarantined %+v, %v", qs, err)
	}
	al, err := c.Alerts(ctx, store.AlertFilter{Unacknowledged: true, Detector: "acl_denials", Since: time.Now().Add(-time.Hour)})
	if err != nil || len(al.Alerts) != 1 || al.Alerts[0].ID != "00000000000000a1" {
		t.Fatalf("alerts %+v, %v", al, err)
	}
	if a, err := c.AcknowledgeAlert(ctx, "00000000000000a1"); err != nil || a.AcknowledgedBy != "operator" {
		t.Errorf("ack %+v, %v", a, err)
	}
	if al, _ := c.Alerts(ctx, store.AlertFilter{Unacknowledged: true}); len(al.Alerts) != 0 {
		t.Errorf("acknowledged alert still listed: %+v", al)
	}
	if _, err := c.AcknowledgeAlert(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ack a missing alert: %v", err)
	}
	if _, err := c.Release(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}
	if qs, _ := c.Quarantined(ctx); len(qs) != 0 || qs == nil {
		t.Errorf("after the release: %#v", qs)
	}
	if _, err := c.Release(ctx, "p-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("release twice: %v", err)
	}
}

// Over HTTPS the client authenticates with its token, and is held to its
// role.
func TestHTTPSWithToken(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	if _, err := s.local.AddDevice(ctx, registry.DeviceSpec{ID: "h-1"}, csrFor(t, "h-1")); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(s.api.Handler())
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	ts.StartTLS()
	defer ts.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	viewer, _, err := s.tokens.Create(ctx, apitoken.RoleViewer, "vera", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := apiclient.New(apiclient.Options{URL: ts.URL + "/", Token: viewer, RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := c.ListDevices(ctx, store.DeviceFilter{})
	if err != nil || len(ds) != 1 || ds[0].ID != "h-1" {
		t.Fatalf("list over HTTPS: %+v, %v", ds, err)
	}
	if who, err := c.WhoAmI(ctx); err != nil || who.Role != apitoken.RoleViewer || who.User != "vera" {
		t.Errorf("whoami %+v, %v", who, err)
	}
	var ae *apiclient.Error
	if _, err := c.Disable(ctx, "h-1", "x"); !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != "forbidden" {
		t.Errorf("a viewer disabling: %v", err)
	}
	if _, err := c.CreateToken(ctx, apitoken.RoleAdmin, "mallory", "", 0); !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Errorf("a viewer minting an admin token: %v", err)
	}
	bad, err := apiclient.New(apiclient.Options{URL: ts.URL, Token: "wdn_0123456789abcdef_" + strings.Repeat("A", 43), RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.WhoAmI(ctx); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("an unknown token: %v", err)
	}
	for _, o := range []apiclient.Options{{URL: "http://" + strings.TrimPrefix(ts.URL, "https://"), Token: viewer}, {URL: ts.URL}, {URL: "https://", Token: viewer}} {
		if _, err := apiclient.New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	// Without the server's CA, nothing is sent.
	untrusting, _ := apiclient.New(apiclient.Options{URL: ts.URL, Token: viewer})
	if _, err := untrusting.WhoAmI(ctx); err == nil {
		t.Error("a server certificate nobody trusts was accepted")
	}
}
