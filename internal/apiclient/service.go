package apiclient

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/api"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/rotation"
	"github.com/warden-iot/warden/internal/store"
)

// uploadTimeout bounds a firmware upload.
const uploadTimeout = 10 * time.Minute

func esc(s string) string { return url.PathEscape(s) }

// fromDevice turns the API's device back into the store's.
func fromDevice(d api.Device) store.Device {
	return store.Device{ID: d.ID, Model: d.Model, Tags: d.Tags, State: store.DeviceState(d.State), StateReason: d.StateReason,
		Owner: d.Owner, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
}

func fromService(s api.Service) store.Service {
	return store.Service{Name: s.Name, Role: s.Role, State: store.DeviceState(s.State), StateReason: s.StateReason,
		CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt}
}

// WhoAmI returns the calling principal.
func (c *Client) WhoAmI(ctx context.Context) (api.WhoAmI, error) {
	var out api.WhoAmI
	return out, c.do(ctx, http.MethodGet, "/v1/whoami", nil, &out)
}

// AddDevice implements admin.Service.
func (c *Client) AddDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (admin.Issued, error) {
	var out api.DeviceCreated
	err := c.do(ctx, http.MethodPost, "/v1/devices", api.DeviceRequest{ID: spec.ID, Model: spec.Model, Tags: spec.Tags, CSR: csrDER}, &out)
	return admin.Issued{ID: out.Device.ID, CertificatePEM: out.CertificatePEM}, err
}

// IssueDevice implements admin.Service.
func (c *Client) IssueDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (admin.Issued, error) {
	var out admin.Issued
	err := c.do(ctx, http.MethodPost, "/v1/device-certificates", api.DeviceRequest{ID: spec.ID, Model: spec.Model, Tags: spec.Tags, CSR: csrDER}, &out)
	return out, err
}

// RegisterDevice implements admin.Service.
func (c *Client) RegisterDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte, certPEM string) (store.Device, error) {
	var out api.DeviceCreated
	err := c.do(ctx, http.MethodPost, "/v1/devices", api.DeviceRequest{ID: spec.ID, Model: spec.Model, Tags: spec.Tags, CSR: csrDER, CertificatePEM: certPEM}, &out)
	return fromDevice(out.Device), err
}

// AddService implements admin.Service.
func (c *Client) AddService(ctx context.Context, name, role string, csrDER []byte) (admin.Issued, error) {
	var out admin.Issued
	err := c.do(ctx, http.MethodPost, "/v1/services", api.ServiceRequest{Name: name, Role: role, CSR: csrDER}, &out)
	return out, err
}

// DeviceDetail returns a device as GET /v1/devices/{id} shows it: with its
// connection, last sighting, firmware and counters, which only a running
// server knows.
func (c *Client) DeviceDetail(ctx context.Context, id string) (api.DeviceDetail, error) {
	var out api.DeviceDetail
	return out, c.do(ctx, http.MethodGet, "/v1/devices/"+esc(id), nil, &out)
}

// Device implements admin.Service.
func (c *Client) Device(ctx context.Context, id string) (registry.DeviceInfo, error) {
	d, err := c.DeviceDetail(ctx, id)
	if err != nil {
		return registry.DeviceInfo{}, err
	}
	info := registry.DeviceInfo{Device: fromDevice(d.Device)}
	for _, cr := range d.Credentials {
		sc := store.Credential{Serial: cr.Serial, SubjectKind: "device", SubjectID: d.ID, Fingerprint: cr.Fingerprint,
			NotBefore: cr.NotBefore, NotAfter: cr.NotAfter, CreatedAt: cr.CreatedAt, RevocationReason: cr.RevocationReason}
		if cr.RevokedAt != nil {
			sc.RevokedAt = *cr.RevokedAt
		}
		if b, _ := pem.Decode([]byte(cr.CertificatePEM)); b != nil {
			if _, err := x509.ParseCertificate(b.Bytes); err == nil {
				sc.Certificate = b.Bytes
			}
		}
		info.Credentials = append(info.Credentials, sc)
	}
	return info, nil
}

// ListDevices implements admin.Service: one page of f.Limit devices
// (default store.DefaultListLimit) after f.After.
func (c *Client) ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.Model != "" {
		q.Set("model", f.Model)
	}
	if f.Owner != "" {
		q.Set("owner", f.Owner)
	}
	for k, v := range f.Tags {
		q.Add("tag", k+":"+v)
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(min(f.Limit, store.MaxListLimit)))
	}
	var out api.DeviceList
	if err := c.do(ctx, http.MethodGet, "/v1/devices?"+q.Encode(), nil, &out); err != nil {
		return nil, err
	}
	ds := make([]store.Device, len(out.Devices))
	for i, d := range out.Devices {
		ds[i] = fromDevice(d)
	}
	return ds, nil
}

// ListServices implements admin.Service.
func (c *Client) ListServices(ctx context.Context) ([]store.Service, error) {
	var out api.ServiceList
	if err := c.do(ctx, http.MethodGet, "/v1/services", nil, &out); err != nil {
		return nil, err
	}
	ss := make([]store.Service, len(out.Services))
	for i, s := range out.Services {
		ss[i] = fromService(s)
	}
	return ss, nil
}

func (c *Client) deviceVerb(ctx context.Context, id, verb, reason string) (store.Device, error) {
	var out api.Device
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+esc(id)+"/"+verb, api.ReasonRequest{Reason: reason}, &out)
	return fromDevice(out), err
}

// Disable implements admin.Service.
func (c *Client) Disable(ctx context.Context, id, reason string) (store.Device, error) {
	return c.deviceVerb(ctx, id, "disable", reason)
}

// Enable implements admin.Service.
func (c *Client) Enable(ctx context.Context, id string) (store.Device, error) {
	return c.deviceVerb(ctx, id, "enable", "")
}

// Revoke implements admin.Service.
func (c *Client) Revoke(ctx context.Context, id, reason string) (store.Device, error) {
	return c.deviceVerb(ctx, id, "revoke", reason)
}

// Release lifts a device's quarantine.
func (c *Client) Release(ctx context.Context, id string) (store.Device, error) {
	return c.deviceVerb(ctx, id, "release", "")
}

// SetTags implements admin.Service.
func (c *Client) SetTags(ctx context.Context, id string, tags map[string]string) (store.Device, error) {
	if tags == nil {
		tags = map[string]string{}
	}
	var out api.Device
	err := c.do(ctx, http.MethodPut, "/v1/devices/"+esc(id)+"/tags", api.TagsRequest{Tags: &tags}, &out)
	return fromDevice(out), err
}

// RevokeService implements admin.Service.
func (c *Client) RevokeService(ctx context.Context, name, reason string) (store.Service, error) {
	var out api.Service
	err := c.do(ctx, http.MethodPost, "/v1/services/"+esc(name)+"/revoke", api.ReasonRequest{Reason: reason}, &out)
	return fromService(out), err
}

// EnableEnvelope implements admin.Service.
func (c *Client) EnableEnvelope(ctx context.Context, id, suite string, required bool) (admin.EnvelopeBundle, error) {
	var out admin.EnvelopeBundle
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+esc(id)+"/envelope", api.EnvelopeRequest{Suite: suite, Required: required}, &out)
	return out, err
}

// Rekey implements admin.Service.
func (c *Client) Rekey(ctx context.Context, id string) (uint32, error) {
	var out api.RekeyResult
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+esc(id)+"/rekey", nil, &out)
	return out.Epoch, err
}

// TrustKey implements admin.Firmware.
func (c *Client) TrustKey(ctx context.Context, pubPEM []byte, name string) (store.ReleaseKey, error) {
	var out store.ReleaseKey
	err := c.do(ctx, http.MethodPost, "/v1/firmware/keys", api.TrustRequest{PublicKeyPEM: string(pubPEM), Name: name}, &out)
	return out, err
}

// UntrustKey implements admin.Firmware.
func (c *Client) UntrustKey(ctx context.Context, id string) (store.ReleaseKey, error) {
	var out store.ReleaseKey
	err := c.do(ctx, http.MethodPost, "/v1/firmware/keys/"+esc(id)+"/revoke", nil, &out)
	return out, err
}

// ReleaseKeys implements admin.Firmware.
func (c *Client) ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error) {
	var out api.KeyList
	err := c.do(ctx, http.MethodGet, "/v1/firmware/keys", nil, &out)
	return out.Keys, err
}

// UploadImage implements admin.Firmware. The image streams to the server,
// which bounds its size.
func (c *Client) UploadImage(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/firmware/images", image)
	if err != nil {
		return store.FirmwareImage{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(api.StatementHeader, base64.StdEncoding.EncodeToString(statement))
	hc := *c.http
	hc.Timeout = uploadTimeout
	var out store.FirmwareImage
	return out, c.send(&hc, req, &out)
}

// Images implements admin.Firmware.
func (c *Client) Images(ctx context.Context, model string) ([]store.FirmwareImage, error) {
	path := "/v1/firmware/images"
	if model != "" {
		path += "?model=" + url.QueryEscape(model)
	}
	var out api.ImageList
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Images, err
}

// CreateRollout implements admin.Firmware.
func (c *Client) CreateRollout(ctx context.Context, spec ota.RolloutSpec) (admin.RolloutCreated, error) {
	var out admin.RolloutCreated
	err := c.do(ctx, http.MethodPost, "/v1/rollouts", spec, &out)
	return out, err
}

// Rollouts implements admin.Firmware.
func (c *Client) Rollouts(ctx context.Context) ([]store.Rollout, error) {
	var out api.RolloutList
	err := c.do(ctx, http.MethodGet, "/v1/rollouts", nil, &out)
	return out.Rollouts, err
}

// RolloutStatus implements admin.Firmware.
func (c *Client) RolloutStatus(ctx context.Context, id string) (ota.Status, error) {
	var out ota.Status
	err := c.do(ctx, http.MethodGet, "/v1/rollouts/"+esc(id), nil, &out)
	return out, err
}

// RolloutDevices implements admin.Firmware.
func (c *Client) RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(min(f.Limit, store.MaxListLimit)))
	}
	var out api.RolloutDeviceList
	err := c.do(ctx, http.MethodGet, "/v1/rollouts/"+esc(id)+"/devices?"+q.Encode(), nil, &out)
	return out.Devices, err
}

func (c *Client) rolloutVerb(ctx context.Context, id, verb, reason string) (store.Rollout, error) {
	var out store.Rollout
	err := c.do(ctx, http.MethodPost, "/v1/rollouts/"+esc(id)+"/"+verb, api.ReasonRequest{Reason: reason}, &out)
	return out, err
}

// PauseRollout implements admin.Firmware.
func (c *Client) PauseRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	return c.rolloutVerb(ctx, id, "pause", reason)
}

// ResumeRollout implements admin.Firmware.
func (c *Client) ResumeRollout(ctx context.Context, id string) (store.Rollout, error) {
	return c.rolloutVerb(ctx, id, "resume", "")
}

// AbortRollout implements admin.Firmware.
func (c *Client) AbortRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	return c.rolloutVerb(ctx, id, "abort", reason)
}

// RotateCA implements admin.CA.
func (c *Client) RotateCA(ctx context.Context, grace time.Duration) (store.Rotation, error) {
	var out store.Rotation
	err := c.do(ctx, http.MethodPost, "/v1/ca/rotate", api.RotateRequest{GraceSeconds: int64(grace / time.Second)}, &out)
	return out, err
}

// CAStatus implements admin.CA.
func (c *Client) CAStatus(ctx context.Context) (rotation.Status, error) {
	var out rotation.Status
	err := c.do(ctx, http.MethodGet, "/v1/ca", nil, &out)
	return out, err
}

// RetireIssuer implements admin.CA.
func (c *Client) RetireIssuer(ctx context.Context, fingerprint string) (admin.IssuerChange, error) {
	var out admin.IssuerChange
	err := c.do(ctx, http.MethodPost, "/v1/ca/issuers/"+esc(fingerprint)+"/retire", nil, &out)
	return out, err
}

// RevokeIssuer implements admin.CA.
func (c *Client) RevokeIssuer(ctx context.Context, fingerprint, reason string) (admin.IssuerChange, error) {
	var out admin.IssuerChange
	err := c.do(ctx, http.MethodPost, "/v1/ca/issuers/"+esc(fingerprint)+"/revoke", api.ReasonRequest{Reason: reason}, &out)
	return out, err
}

// String names where the client points, for logs.
func (c *Client) String() string {
	if c.token == "" {
		return "admin socket"
	}
	return fmt.Sprintf("API %s", c.base)
}
