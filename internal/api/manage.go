package api

import (
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"time"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// The routes here are the rest of what the CLI does to a running server:
// issuing certificates, services, envelope keys, firmware keys and
// uploads, rollout creation and the CA. `warden` calls them through the
// admin socket (LocalHandler) and an operator's tooling through the
// HTTPS listener, so that every CLI action is also an API call.

// DeviceRequest is the body of POST /v1/devices and POST
// /v1/device-certificates.
type DeviceRequest struct {
	ID    string            `json:"id"`
	Model string            `json:"model,omitempty"`
	Tags  map[string]string `json:"tags,omitempty"`
	// CSR is the device's PKCS #10 request, DER (base64 in JSON); its
	// common name must be the device ID.
	CSR []byte `json:"csr"`
	// CertificatePEM, on POST /v1/devices only, registers a certificate
	// that POST /v1/device-certificates issued for the same CSR, instead
	// of issuing one: provisioning delivers key and certificate to the
	// device first and registers it only then.
	CertificatePEM string `json:"certificate_pem,omitempty"`
}

// DeviceCreated is the answer of POST /v1/devices.
type DeviceCreated struct {
	Device         Device `json:"device"`
	CertificatePEM string `json:"certificate_pem"`
}

// EnvelopeRequest is the body of POST /v1/devices/{id}/envelope.
type EnvelopeRequest struct {
	Suite    string `json:"suite"` // ccm-8, legacy-cbc-hmac or sign-p256
	Required bool   `json:"required"`
}

// RekeyResult is the answer of POST /v1/devices/{id}/rekey.
type RekeyResult struct {
	Epoch uint32 `json:"epoch"`
}

// Service is a back-end service identity as the API shows it.
type Service struct {
	Name        string    `json:"name"`
	Role        string    `json:"role"`
	State       string    `json:"state"`
	StateReason string    `json:"state_reason"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// ServiceList is the answer of GET /v1/services.
type ServiceList struct {
	Services []Service `json:"services"`
}

// ServiceRequest is the body of POST /v1/services.
type ServiceRequest struct {
	Name string `json:"name"`
	Role string `json:"role"` // reader or commander
	CSR  []byte `json:"csr"`  // DER, base64 in JSON; common name = Name
}

// KeyList is the answer of GET /v1/firmware/keys.
type KeyList struct {
	Keys []store.ReleaseKey `json:"keys"`
}

// TrustRequest is the body of POST /v1/firmware/keys.
type TrustRequest struct {
	PublicKeyPEM string `json:"public_key_pem"`
	Name         string `json:"name"`
}

// StatementHeader carries the base64 release statement with POST
// /v1/firmware/images, whose body is the image file itself.
const StatementHeader = "X-Warden-Statement"

// RolloutDeviceList is the answer of GET /v1/rollouts/{id}/devices.
type RolloutDeviceList struct {
	Devices   []store.RolloutDevice `json:"devices"`
	NextAfter string                `json:"next_after"` // "" on the last page
}

// RotateRequest is the body of POST /v1/ca/rotate.
type RotateRequest struct {
	// GraceSeconds is how long the old issuing CA stays trusted at most
	// (it is retired as soon as every device has switched); 0: the
	// server's default (30 days).
	GraceSeconds int64 `json:"grace_seconds"`
}

// DefaultRotationGrace is the grace of a CA rotation that names none, as
// `warden ca rotate` has it.
const DefaultRotationGrace = 30 * 24 * time.Hour

// maxUploadTime bounds one firmware upload: the listener's read timeout is
// for small requests.
const maxUploadTime = 10 * time.Minute

func toService(s store.Service) Service {
	return Service{Name: s.Name, Role: s.Role, State: string(s.State), StateReason: s.StateReason,
		CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.UpdatedAt.UTC()}
}

// addDevice serves POST /v1/devices: issue and register, or register what
// POST /v1/device-certificates issued.
func (a *API) addDevice(c *call) (any, error) {
	var req DeviceRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if err := identity.ValidateDeviceID(req.ID); err != nil {
		return nil, invalidf("%v", err)
	}
	spec := req.spec()
	var out DeviceCreated
	var err error
	if req.CertificatePEM != "" {
		var d store.Device
		d, err = a.admin.RegisterDevice(c.ctx(), spec, req.CSR, req.CertificatePEM)
		out = DeviceCreated{Device: toDevice(d), CertificatePEM: req.CertificatePEM}
	} else {
		var is admin.Issued
		if is, err = a.admin.AddDevice(c.ctx(), spec, req.CSR); err == nil {
			// The device as stored (its timestamps); what was asked for if
			// it cannot be read back (it is registered either way).
			dev := store.Device{ID: req.ID, Model: req.Model, Tags: req.Tags, State: store.StateActive}
			if info, derr := a.admin.Device(c.ctx(), req.ID); derr == nil {
				dev = info.Device
			}
			out = DeviceCreated{Device: toDevice(dev), CertificatePEM: is.CertificatePEM}
		}
	}
	c.done("device:"+req.ID, err, map[string]string{"model": req.Model})
	if err != nil {
		return nil, err
	}
	return created{out}, nil
}

func (req DeviceRequest) spec() registry.DeviceSpec {
	return registry.DeviceSpec{ID: req.ID, Model: req.Model, Tags: req.Tags}
}

// issueDeviceCert serves POST /v1/device-certificates: a certificate for a
// device that is not registered yet (provisioning registers it after
// delivery).
func (a *API) issueDeviceCert(c *call) (any, error) {
	var req DeviceRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if req.CertificatePEM != "" {
		return nil, invalidf("certificate_pem belongs to POST /v1/devices, which registers an issued certificate")
	}
	if err := identity.ValidateDeviceID(req.ID); err != nil {
		return nil, invalidf("%v", err)
	}
	is, err := a.admin.IssueDevice(c.ctx(), req.spec(), req.CSR)
	c.done("device:"+req.ID, err, map[string]string{"step": "issue"})
	if err != nil {
		return nil, err
	}
	return created{is}, nil
}

func (a *API) enableEnvelope(c *call) (any, error) {
	var req EnvelopeRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	b, err := a.admin.EnableEnvelope(c.ctx(), c.id(), req.Suite, req.Required)
	c.done("device:"+c.id(), err, map[string]string{"suite": req.Suite, "required": strconv.FormatBool(req.Required)})
	if err != nil {
		return nil, err
	}
	return created{b}, nil
}

func (a *API) rekeyDevice(c *call) (any, error) {
	if err := readJSON(c.r, &struct{}{}, true); err != nil {
		return nil, err
	}
	epoch, err := a.admin.Rekey(c.ctx(), c.id())
	c.done("device:"+c.id(), err, map[string]string{"epoch": strconv.FormatUint(uint64(epoch), 10)})
	if err != nil {
		return nil, err
	}
	return RekeyResult{Epoch: epoch}, nil
}

func (a *API) listServices(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	ss, err := a.admin.ListServices(c.ctx())
	if err != nil {
		return nil, err
	}
	out := ServiceList{Services: make([]Service, 0, len(ss))}
	for _, s := range ss {
		out.Services = append(out.Services, toService(s))
	}
	return out, nil
}

func (a *API) addService(c *call) (any, error) {
	var req ServiceRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	is, err := a.admin.AddService(c.ctx(), req.Name, req.Role, req.CSR)
	c.done("service:"+req.Name, err, map[string]string{"role": req.Role})
	if err != nil {
		return nil, err
	}
	return created{is}, nil
}

func (a *API) revokeService(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	s, err := a.admin.RevokeService(c.ctx(), c.id(), why)
	c.done("service:"+c.id(), err, map[string]string{"reason": why})
	if err != nil {
		return nil, err
	}
	return toService(s), nil
}

func (a *API) listKeys(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	ks, err := a.admin.ReleaseKeys(c.ctx())
	if err != nil {
		return nil, err
	}
	if ks == nil {
		ks = []store.ReleaseKey{}
	}
	return KeyList{Keys: ks}, nil
}

func (a *API) trustKey(c *call) (any, error) {
	var req TrustRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	k, err := a.admin.TrustKey(c.ctx(), []byte(req.PublicKeyPEM), req.Name)
	c.done("release-key:"+k.ID, err, map[string]string{"name": req.Name})
	if err != nil {
		return nil, err
	}
	return created{k}, nil
}

func (a *API) untrustKey(c *call) (any, error) {
	if err := readJSON(c.r, &struct{}{}, true); err != nil {
		return nil, err
	}
	if !isHexDigest(c.id()) {
		return nil, invalidf("a release key ID is 64 hex digits (`warden fw keys` lists them)")
	}
	k, err := a.admin.UntrustKey(c.ctx(), c.id())
	c.done("release-key:"+c.id(), err, nil)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// uploadImage serves POST /v1/firmware/images: the body is the image (the
// OTA service bounds its size), the statement rides in StatementHeader.
func (a *API) uploadImage(c *call) (any, error) {
	if ct := c.r.Header.Get("Content-Type"); ct != "application/octet-stream" {
		return nil, &httpError{http.StatusUnsupportedMediaType, codeUnsupportedType, "send the image as Content-Type: application/octet-stream with its release statement, base64, in " + StatementHeader}
	}
	st, err := base64.StdEncoding.DecodeString(c.r.Header.Get(StatementHeader))
	if err != nil || len(st) == 0 {
		return nil, invalidf("the %s header must hold the release statement, base64 (`warden fw sign` writes it beside the image)", StatementHeader)
	}
	// Large images take longer than the listener's read timeout allows a
	// request; where the connection supports it, give this one longer.
	_ = http.NewResponseController(c.w).SetReadDeadline(time.Now().Add(maxUploadTime))
	img, err := a.admin.UploadImage(c.ctx(), st, c.r.Body)
	subject, details := "firmware:"+img.SHA256, map[string]string{"model": img.Model, "version": img.Version}
	if err != nil && img.SHA256 == "" {
		subject, details = refusedUpload(st)
	}
	c.done(subject, err, details)
	if err != nil {
		return nil, err
	}
	return created{img}, nil
}

func (a *API) createRollout(c *call) (any, error) {
	var spec ota.RolloutSpec
	if err := readJSON(c.r, &spec, false); err != nil {
		return nil, err
	}
	out, err := a.admin.CreateRollout(c.ctx(), spec)
	c.done("rollout:"+out.Rollout.ID, err, map[string]string{"image": spec.Image})
	if err != nil {
		return nil, err
	}
	return created{out}, nil
}

func (a *API) rolloutDevices(c *call) (any, error) {
	q := c.r.URL.Query()
	if err := onlyQuery(q, "state", "after", "limit"); err != nil {
		return nil, err
	}
	f := store.RolloutDeviceFilter{State: q.Get("state"), After: q.Get("after"), Limit: store.DefaultListLimit}
	if f.State != "" && !store.RolloutDeviceStateValid(f.State) {
		return nil, invalidf("state %q is not a rollout device state (pending, offered, downloading, verified, installing, booted, failed, rolled-back, timed-out, skipped)", f.State)
	}
	if f.After != "" {
		if err := identity.ValidateDeviceID(f.After); err != nil {
			return nil, invalidf("after %q is not a device ID (pass the next_after of the previous page)", f.After)
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > store.MaxListLimit {
			return nil, invalidf("limit %q is not a number from 1 to %d", s, store.MaxListLimit)
		}
		f.Limit = n
	}
	ds, err := a.admin.RolloutDevices(c.ctx(), c.id(), f)
	if err != nil {
		return nil, err
	}
	out := RolloutDeviceList{Devices: ds}
	if out.Devices == nil {
		out.Devices = []store.RolloutDevice{}
	}
	if len(ds) == f.Limit {
		out.NextAfter = ds[len(ds)-1].DeviceID
	}
	return out, nil
}

func (a *API) rotateCA(c *call) (any, error) {
	var req RotateRequest
	if err := readJSON(c.r, &req, true); err != nil {
		return nil, err
	}
	if req.GraceSeconds < 0 || req.GraceSeconds > int64((10*365*24*time.Hour)/time.Second) {
		return nil, invalidf("grace_seconds must be 0 (the default) to ten years")
	}
	grace := time.Duration(req.GraceSeconds) * time.Second
	if grace == 0 {
		grace = DefaultRotationGrace
	}
	rot, err := a.admin.RotateCA(c.ctx(), grace)
	c.done("ca-rotation:"+rot.ID, err, map[string]string{"grace_seconds": strconv.FormatInt(req.GraceSeconds, 10)})
	if err != nil {
		return nil, err
	}
	return created{rot}, nil
}

func (a *API) retireIssuer(c *call) (any, error) {
	if err := readJSON(c.r, &struct{}{}, true); err != nil {
		return nil, err
	}
	res, err := a.admin.RetireIssuer(c.ctx(), c.id())
	c.done("issuer:"+c.id(), err, nil)
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (a *API) revokeIssuer(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	if why == "" {
		return nil, invalidf("revoking an issuing CA needs a reason (it goes to the CRL's audit trail)")
	}
	res, err := a.admin.RevokeIssuer(c.ctx(), c.id(), why)
	c.done("issuer:"+c.id(), err, map[string]string{"reason": why})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// created answers 201 with its value.
type created struct{ v any }

// isHexDigest reports whether s is a SHA-256 in hex, either case.
func isHexDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i] | 0x20
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// refusedUpload names an upload refused before an image was stored by
// what its release statement claims, unverified (details "claimed":
// "true"): the image digest, model, version and signing key, so that the
// audit record says which release was refused.
func refusedUpload(statement []byte) (subject string, details map[string]string) {
	ss, err := firmware.ParseStatement(statement)
	if err != nil {
		return "firmware:unreadable-statement", nil
	}
	return "firmware:" + hex.EncodeToString(ss.Statement.ImageSHA256[:]), map[string]string{
		"model": ss.Statement.Model, "version": ss.Statement.Version.String(), "key": ss.KeyID, "claimed": "true"}
}
