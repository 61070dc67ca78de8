package api

import (
	"fmt"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/monitor"
	"github.com/warden-iot/warden/internal/stream"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/command"

	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/onboard"
	"github.com/warden-iot/warden/internal/onboard/claimtoken"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// clock is a settable time source shared by the limiters and the tokens.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder keeps audit events.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Record(_ context.Context, e audit.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) find(action, outcome, reason string) []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Event
	for _, e := range r.events {
		if e.Action == action && e.Outcome == outcome && (reason == "" || e.Reason == reason) {
			out = append(out, e)
		}
	}
	return out
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
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// presence says the devices in the set are connected.
type presence map[string]bool

func (p presence) Connected(id string) bool { return p[id] }

// Users of the fixture's tokens.
const (
	alice = "alice@example.com"
	bob   = "bob@example.com"
)

// Token names of the fixture: a role, and "app2", an app of another user.
var tokenNames = []string{"admin", "operator", "viewer", "app", "app2"}

type fixture struct {
	t        *testing.T
	hub      *stream.Hub
	st       *sqlite.Store
	reg      *registry.Registry
	ca       *pki.Authority
	tokens   *apitoken.Service
	clk      *clock
	audit    *recorder
	logs     *syncBuffer
	metrics  *prometheus.Registry
	api      *API
	handler  http.Handler // the API and /v1/claims, mounted as the server does
	tok      map[string]string
	rollout  string // a running rollout
	image    string // its image's SHA-256
	fwKey    crypto.Signer
	presence presence
	monitor  *monitor.Monitor
	onboard  *onboard.Service
}

type fixtureOptions struct {
	noPresence bool
	tune       func(*Options)
}

// Devices of the fixture: alice owns dev-a1..3, bob dev-b1, nobody dev-x.
var fixtureDevices = map[string]string{"dev-a1": alice, "dev-a2": alice, "dev-a3": alice, "dev-b1": bob, "dev-x": ""}

func newFixture(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	master := make([]byte, keystore.MasterKeySize)
	_, _ = rand.Read(master)
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	ca, err := pki.Init(filepath.Join(dir, "pki"), ks, pki.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "warden.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	quiet := slog.New(slog.DiscardHandler)
	reg := registry.New(st, ca, registry.Options{Logger: quiet, Now: clk.Now, Sealer: ks})
	otaSvc, err := ota.New(ota.Options{Store: st, Blobs: ota.FileBlobs{Dir: filepath.Join(dir, "firmware")}, Logger: quiet, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := rotation.New(rotation.Options{Store: st, CA: ca, Registry: reg, Logger: quiet, Now: clk.Now,
		Chain: func() []*x509.Certificate { return []*x509.Certificate{ca.Issuing()} }})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	f := &fixture{t: t, st: st, reg: reg, ca: ca, clk: clk, audit: rec, logs: &syncBuffer{}, metrics: prometheus.NewRegistry(),
		tok: map[string]string{}, presence: presence{"dev-a1": true}}
	f.tokens = apitoken.New(st, apitoken.Options{Now: clk.Now, Logger: quiet, Audit: rec})
	for _, name := range tokenNames {
		role, user := name, "ops@example.com"
		switch name {
		case "app":
			user = alice
		case "app2":
			role, user = "app", bob
		}
		tok, _, err := f.tokens.Create(ctx, role, user, "test", 0)
		if err != nil {
			t.Fatal(err)
		}
		f.tok[name] = tok
	}
	for id, owner := range fixtureDevices {
		f.addDevice(id, "sensor", map[string]string{"site": "lyon"})
		if owner != "" {
			if _, err := st.SetDeviceOwner(ctx, id, owner, clk.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.rollout = f.startRollout(otaSvc)

	// The server's rekey also sends the new key to the device; here it
	// is only issued.
	rekey := func(ctx context.Context, id string) (uint32, error) {
		s, err := reg.BeginRekey(ctx, id)
		clear(s.Secret)
		return s.Epoch, err
	}
	key, err := claimtoken.LoadOrCreate(filepath.Join(dir, "claim.key"), ks)
	if err != nil {
		t.Fatal(err)
	}
	onb, err := onboard.New(onboard.Options{Registry: reg, Store: st, CA: ca, Keystore: ks, ClaimKey: key, Logger: quiet, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.onboard = onb
	opts := Options{
		Tokens: f.tokens, Admin: admin.Local{Registry: reg, OTA: otaSvc, Rotation: rot, RekeyFunc: rekey},
		Onboarding: onb, Claims: reg, Enrollments: st, TokenAdmin: f.tokens,
		Issuers: ca, Audit: rec, Logger: slog.New(slog.NewJSONHandler(f.logs, nil)), Registerer: f.metrics, Now: clk.Now,
		// High enough that no test but the rate-limit ones meets a limit.
		TokenRate: 1000, TokenBurst: 1000, FailureRate: 1000, FailureBurst: 1000,
	}
	if !o.noPresence {
		opts.Presence = f.presence
	}
	echo := &echoDevices{}
	cmds, err := command.New(command.Options{Sender: echo, Presence: f.presence, Devices: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	echo.svc = cmds
	opts.Commands = cmds
	f.hub = stream.NewHub(nil)
	opts.Streams = f.hub
	opts.Firmware = st
	mon, err := monitor.New(ctx, monitor.Options{Store: st, Config: config.DefaultMonitor(), Logger: quiet, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAlert(ctx, store.Alert{ID: "a1", Detector: "acl_denials", Severity: store.SeverityWarning, Device: "dev-a2",
		Summary: "7 ACL denials in 1m", Response: store.ResponseQuarantine, Count: 1, CreatedAt: clk.Now(), LastSeen: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := mon.Quarantine(ctx, "dev-a2", "test", "test"); err != nil {
		t.Fatal(err)
	}
	opts.Alerts = mon
	opts.Seen = mon
	opts.Quarantines = mon
	f.monitor = mon
	opts.AuditLog = filepath.Join(dir, "audit.log")
	alog, err := audit.Open(opts.AuditLog, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		alog.Record(ctx, audit.Event{Action: "device.revoke", Outcome: "done", Actor: "operator", Subject: fmt.Sprintf("device:dev-%d", i)})
	}
	if err := alog.Close(); err != nil {
		t.Fatal(err)
	}
	if o.tune != nil {
		o.tune(&opts)
	}
	f.api, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", f.api.Handler())
	mux.Handle(onboard.PathClaims, f.api.Guard("POST "+onboard.PathClaims,
		onb.Handler(onboard.HTTPOptions{Tokens: f.tokens, TokenHeader: apitoken.FromRequest})))
	f.handler = mux
	return f
}

// addDevice registers a device with a real certificate.
func (f *fixture) addDevice(id, model string, tags map[string]string) {
	f.t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		f.t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, id)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, _, err := f.reg.AddDevice(context.Background(), registry.DeviceSpec{ID: id, Model: model, Tags: tags}, csr); err != nil {
		f.t.Fatal(err)
	}
}

// startRollout uploads a signed image for model "sensor" and rolls it out.
func (f *fixture) startRollout(svc *ota.Service) string {
	f.t.Helper()
	ctx := context.Background()
	key, err := firmware.GenerateKey(firmware.KeyECDSAP256)
	if err != nil {
		f.t.Fatal(err)
	}
	pub, err := firmware.EncodePublicKeyPEM(key.Public())
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := svc.Trust(ctx, pub, "test", "operator"); err != nil {
		f.t.Fatal(err)
	}
	f.fwKey = key
	img, stmt := f.signedImage("1.2.3+4", 1)
	row, err := svc.Upload(ctx, stmt, bytes.NewReader(img), "operator")
	if err != nil {
		f.t.Fatal(err)
	}
	f.image = row.SHA256
	r, _, err := svc.CreateRollout(ctx, ota.RolloutSpec{Image: row.SHA256}, "operator")
	if err != nil {
		f.t.Fatal(err)
	}
	return r.ID
}

// signedImage returns a new image for model "sensor", signed with the
// fixture's trusted release key, and its release statement.
func (f *fixture) signedImage(version string, sequence uint64) (img, stmt []byte) {
	f.t.Helper()
	ver, err := firmware.ParseVersion(version)
	if err != nil {
		f.t.Fatal(err)
	}
	payload := make([]byte, 2000)
	_, _ = rand.Read(payload)
	img, err = firmware.Sign(payload, f.fwKey, firmware.SignOptions{Version: ver, SecurityCounter: 1})
	if err != nil {
		f.t.Fatal(err)
	}
	now := f.clk.Now()
	stmt, err = firmware.SignStatement(firmware.Statement{Model: "sensor", Version: ver, SecurityCounter: 1,
		ImageSHA256: sha256.Sum256(img), ImageSize: int64(len(img)), Sequence: sequence, IssuedAt: now, ExpiresAt: now.Add(24 * time.Hour)}, f.fwKey)
	if err != nil {
		f.t.Fatal(err)
	}
	return img, stmt
}

// req describes one request.
type req struct {
	method, path string
	token        string // a token name of the fixture, or "raw:" + the header value, or "" for none
	body         string
	contentType  string // default application/json when there is a body
	remote       string // default 192.0.2.1:40000
	header       http.Header
}

func (f *fixture) do(r req) *httptest.ResponseRecorder {
	f.t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr := httptest.NewRequest(r.method, r.path, body)
	if strings.HasPrefix(r.path, "/v1/stream") {
		// A stream lasts until its reader goes: this one goes soon.
		ctx, cancel := context.WithTimeout(context.Background(), streamFor)
		defer cancel()
		hr = hr.WithContext(ctx)
	}
	hr.RemoteAddr = "192.0.2.1:40000"
	if r.remote != "" {
		hr.RemoteAddr = r.remote
	}
	switch {
	case strings.HasPrefix(r.token, "raw:"):
		hr.Header.Set("Authorization", strings.TrimPrefix(r.token, "raw:"))
	case r.token != "":
		tok, ok := f.tok[r.token]
		if !ok {
			f.t.Fatalf("no token %q in the fixture", r.token)
		}
		hr.Header.Set("Authorization", "Bearer "+tok)
	}
	if r.body != "" {
		ct := r.contentType
		if ct == "" {
			ct = "application/json"
		}
		hr.Header.Set("Content-Type", ct)
	}
	for k, vs := range r.header {
		hr.Header[k] = vs
	}
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, hr)
	return w
}

// decode decodes a JSON answer into v.
func decode(t *testing.T, w *httptest.ResponseRecorder, v any) {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %s", ct, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("decode %s: %v", w.Body, err)
	}
}

// errorCode returns the code of an error answer.
func errorCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e errorBody
	decode(t, w, &e)
	return e.Error.Code
}

// device reads a device from the store.
func (f *fixture) device(id string) store.Device {
	f.t.Helper()
	d, err := f.st.GetDevice(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// counter returns the value of warden_api_requests_total{route,code}.
func (f *fixture) counter(route, code string) float64 {
	f.t.Helper()
	mfs, err := f.metrics.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "warden_api_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == route && labels["code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// echoDevices plays the connected devices for the command relay: "fail"
// fails, "silent" is never answered, anything else echoes its body.
type echoDevices struct{ svc *command.Service }

func (e *echoDevices) SendDown(_ context.Context, id, _ string, payload []byte, _ byte, _ ...broker.Property) error {
	cmd, err := commandproto.ParseCommand(payload)
	if err != nil {
		return err
	}
	r := commandproto.Result{ID: cmd.ID, Status: commandproto.StatusOK, Body: cmd.Body}
	switch cmd.Name {
	case "silent":
		return nil
	case "fail":
		r = commandproto.Result{ID: cmd.ID, Status: commandproto.StatusError, Error: "the relay is stuck"}
	}
	b, err := r.Marshal()
	if err != nil {
		return err
	}
	go e.svc.Result(context.Background(), id, b)
	return nil
}

// streamFor is how long the fixture reads a /v1/stream answer.
const streamFor = 300 * time.Millisecond
