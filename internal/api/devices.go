package api

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/apitoken"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/monitor"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// WhoAmI is the answer of GET /v1/whoami.
type WhoAmI struct {
	TokenID string `json:"token_id"`
	Role    string `json:"role"`
	User    string `json:"user"`
}

// Device is a device as the API shows it.
type Device struct {
	ID          string            `json:"id"`
	Model       string            `json:"model"`
	Tags        map[string]string `json:"tags"`
	State       string            `json:"state"`
	StateReason string            `json:"state_reason"`
	Owner       string            `json:"owner"` // "" until a user claims it
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

// DeviceDetail is the answer of GET /v1/devices/{id}.
type DeviceDetail struct {
	Device
	// Connected is null when this server cannot tell.
	Connected   *bool        `json:"connected"`
	Credentials []Credential `json:"credentials"` // newest first
	// Firmware is what the device last reported running; null if it never
	// reported (or this server cannot tell).
	Firmware *Firmware `json:"firmware"`
	// LastSeen is when the device last connected or published since the
	// server started; null if not since then (or this server cannot tell).
	LastSeen *time.Time `json:"last_seen"`
	// Counters count its messages, bytes, sessions and ACL denials since
	// the server started (or since the monitor forgot it after
	// monitor.forget_after of silence); null when not tracked.
	Counters *monitor.Activity `json:"counters"`
}

// SeenLookup tells when a device was last seen; *monitor.Monitor
// implements it.
type SeenLookup interface {
	LastSeen(id string) (time.Time, bool)
	// Activity counts what the device did while it was tracked.
	Activity(id string) (monitor.Activity, bool)
}

// Firmware is a device's last firmware report.
type Firmware struct {
	Version         string    `json:"version"`
	SecurityCounter uint32    `json:"security_counter"`
	ImageSHA256     string    `json:"image_sha256,omitempty"`
	ReportedAt      time.Time `json:"reported_at"`
}

// FirmwareLookup reads what a device last reported running; store.Store
// implements it.
type FirmwareLookup interface {
	GetDeviceFirmware(ctx context.Context, deviceID string) (store.DeviceFirmware, error)
}

// Credential is one of a device's certificates; nothing secret.
type Credential struct {
	Serial           string     `json:"serial"`
	Fingerprint      string     `json:"fingerprint"` // lowercase hex SHA-256 of the DER certificate
	NotBefore        time.Time  `json:"not_before"`
	NotAfter         time.Time  `json:"not_after"`
	CreatedAt        time.Time  `json:"created_at"`
	RevokedAt        *time.Time `json:"revoked_at"` // null unless revoked
	RevocationReason string     `json:"revocation_reason"`
	// IssuerFingerprint names the issuing CA that signed it; null when
	// unknown (an issuing CA this server no longer has).
	IssuerFingerprint *string `json:"issuer_fingerprint"`
	CertificatePEM    string  `json:"certificate_pem"`
}

// DeviceList is the answer of GET /v1/devices.
type DeviceList struct {
	Devices []Device `json:"devices"`
	// NextAfter is the after of the next page; "" on the last page.
	NextAfter string `json:"next_after"`
}

// ReasonRequest is the optional body of the state changes.
type ReasonRequest struct {
	Reason string `json:"reason"`
}

// TagsRequest is the body of PUT /v1/devices/{id}/tags.
type TagsRequest struct {
	// Tags replaces every tag of the device; {} removes them all. It must
	// be given: an absent or null tags is refused rather than read as {}.
	Tags *map[string]string `json:"tags"`
}

func toDevice(d store.Device) Device {
	tags := d.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	return Device{ID: d.ID, Model: d.Model, Tags: tags, State: string(d.State), StateReason: d.StateReason,
		Owner: d.Owner, CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC()}
}

func (a *API) whoami(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	return WhoAmI{TokenID: c.tok.ID, Role: c.tok.Role, User: c.tok.User}, nil
}

// deviceQuery lists the query parameters of GET /v1/devices.
var deviceQuery = []string{"state", "model", "owner", "tag", "after", "limit"}

// parseDeviceQuery reads the filter and page of GET /v1/devices. Unknown
// parameters are refused, so a typo does not silently widen a listing.
func parseDeviceQuery(q url.Values) (store.DeviceFilter, error) {
	var f store.DeviceFilter
	for k, vs := range q {
		if !slices.Contains(deviceQuery, k) {
			return f, invalidf("unknown query parameter %q (allowed: %s)", k, strings.Join(deviceQuery, ", "))
		}
		if k != "tag" && len(vs) > 1 {
			return f, invalidf("query parameter %q is given %d times; give it once", k, len(vs))
		}
	}
	if s := q.Get("state"); s != "" {
		if !store.DeviceState(s).Valid() {
			return f, invalidf("state %q is not one of %s, %s, %s", s, store.StateActive, store.StateDisabled, store.StateRevoked)
		}
		f.State = store.DeviceState(s)
	}
	f.Model = q.Get("model")
	if len(f.Model) > registry.MaxModelLen {
		return f, invalidf("model is %d bytes; at most %d", len(f.Model), registry.MaxModelLen)
	}
	f.Owner = q.Get("owner")
	if len(f.Owner) > apitoken.MaxUserLen {
		return f, invalidf("owner is %d bytes; at most %d", len(f.Owner), apitoken.MaxUserLen)
	}
	tags, err := parseTagFilter(q["tag"])
	if err != nil {
		return f, err
	}
	f.Tags = tags
	if s := q.Get("after"); s != "" {
		if err := identity.ValidateDeviceID(s); err != nil {
			return f, invalidf("after %q is not a device ID (pass the next_after of the previous page)", s)
		}
		f.After = s
	}
	f.Limit = store.DefaultListLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > store.MaxListLimit {
			return f, invalidf("limit %q is not a number from 1 to %d", s, store.MaxListLimit)
		}
		f.Limit = n
	}
	return f, nil
}

// parseTagFilter reads tag=KEY:VALUE parameters (a key cannot hold ':',
// so the first one splits), every pair of which must match. A key given
// twice with different values could match nothing, so it is refused.
func parseTagFilter(vs []string) (map[string]string, error) {
	if len(vs) == 0 {
		return nil, nil
	}
	if len(vs) > registry.MaxTags {
		return nil, invalidf("%d tag filters; at most %d", len(vs), registry.MaxTags)
	}
	tags := make(map[string]string, len(vs))
	for _, kv := range vs {
		k, v, ok := strings.Cut(kv, ":")
		if !ok || k == "" {
			return nil, invalidf("tag filter %q: want KEY:VALUE", kv)
		}
		if old, dup := tags[k]; dup && old != v {
			return nil, invalidf("tag %q is filtered on two values; a device has one", k)
		}
		tags[k] = v
	}
	if err := registry.ValidateTags(tags); err != nil {
		return nil, invalidf("tag filter: %v", err)
	}
	return tags, nil
}

func (a *API) listDevices(c *call) (any, error) {
	f, err := parseDeviceQuery(c.r.URL.Query())
	if err != nil {
		return nil, err
	}
	if c.tok.Role == apitoken.RoleApp {
		f.Owner = c.tok.User // whatever was asked: an app sees its user's devices
	}
	page := f.Limit
	// One row more than asked tells whether there is a next page, where
	// the store allows it.
	if f.Limit < store.MaxListLimit {
		f.Limit++
	}
	ds, err := a.admin.ListDevices(c.ctx(), f)
	if err != nil {
		return nil, err
	}
	out := DeviceList{Devices: make([]Device, 0, min(len(ds), page))}
	for i, d := range ds {
		if i == page {
			break
		}
		out.Devices = append(out.Devices, toDevice(d))
	}
	if len(ds) > page || (len(ds) == page && page == store.MaxListLimit) {
		out.NextAfter = out.Devices[len(out.Devices)-1].ID
	}
	return out, nil
}

func (a *API) showDevice(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	info, err := a.admin.Device(c.ctx(), c.id())
	if err != nil {
		return nil, err
	}
	if c.tok.Role == apitoken.RoleApp && info.Owner != c.tok.User {
		return nil, notFoundError{} // claimed by another user since the gate looked
	}
	out := DeviceDetail{Device: toDevice(info.Device), Credentials: make([]Credential, 0, len(info.Credentials))}
	if a.presence != nil {
		on := a.presence.Connected(info.ID)
		out.Connected = &on
	}
	for _, cr := range info.Credentials {
		out.Credentials = append(out.Credentials, a.toCredential(cr))
	}
	if a.seen != nil {
		if t, ok := a.seen.LastSeen(info.ID); ok {
			out.LastSeen = &t
		}
		if n, ok := a.seen.Activity(info.ID); ok {
			out.Counters = &n
		}
	}
	if a.firmware != nil {
		fw, err := a.firmware.GetDeviceFirmware(c.ctx(), info.ID)
		switch {
		case err == nil:
			out.Firmware = &Firmware{Version: fw.Version, SecurityCounter: fw.SecurityCounter, ImageSHA256: fw.ImageSHA256, ReportedAt: fw.ReportedAt.UTC()}
		case !errors.Is(err, store.ErrNotFound):
			return nil, err
		}
	}
	return out, nil
}

func (a *API) toCredential(cr store.Credential) Credential {
	out := Credential{Serial: cr.Serial, Fingerprint: cr.Fingerprint, NotBefore: cr.NotBefore.UTC(), NotAfter: cr.NotAfter.UTC(),
		CreatedAt: cr.CreatedAt.UTC(), RevocationReason: cr.RevocationReason}
	if cr.Revoked() {
		t := cr.RevokedAt.UTC()
		out.RevokedAt = &t
	}
	if len(cr.Certificate) > 0 {
		out.CertificatePEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cr.Certificate}))
	}
	if a.issuers != nil && len(cr.Certificate) > 0 {
		if cert, err := x509.ParseCertificate(cr.Certificate); err == nil {
			if is, ok := a.issuers.IssuerOf(cert); ok {
				fp := is.Fingerprint
				out.IssuerFingerprint = &fp
			}
		}
	}
	return out
}

// reason reads the optional {"reason"} body.
func reason(c *call) (string, error) {
	var req ReasonRequest
	if err := readJSON(c.r, &req, true); err != nil {
		return "", err
	}
	return req.Reason, checkReason(req.Reason)
}

func (a *API) disableDevice(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	d, err := a.admin.Disable(c.ctx(), c.id(), why)
	return a.changed(c, d, err, map[string]string{"reason": why})
}

func (a *API) enableDevice(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	d, err := a.admin.Enable(c.ctx(), c.id())
	return a.changed(c, d, err, map[string]string{"reason": why})
}

func (a *API) revokeDevice(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	d, err := a.admin.Revoke(c.ctx(), c.id(), why)
	return a.changed(c, d, err, map[string]string{"reason": why})
}

func (a *API) setTags(c *call) (any, error) {
	var req TagsRequest
	if err := readJSON(c.r, &req, false); err != nil {
		return nil, err
	}
	if req.Tags == nil {
		return nil, invalidf(`the body must give "tags": an object of KEY: VALUE ({} removes every tag)`)
	}
	tags := maps.Clone(*req.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	d, err := a.admin.SetTags(c.ctx(), c.id(), tags)
	return a.changed(c, d, err, map[string]string{"tags": fmt.Sprint(len(tags))})
}

// changed audits a device change and answers the device.
func (a *API) changed(c *call, d store.Device, err error, details map[string]string) (any, error) {
	c.done("device:"+c.id(), err, details)
	if err != nil {
		return nil, err
	}
	return toDevice(d), nil
}
