package admin

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// Firmware is every firmware and rollout action the CLI offers.
type Firmware interface {
	TrustKey(ctx context.Context, pubPEM []byte, name string) (store.ReleaseKey, error)
	UntrustKey(ctx context.Context, id string) (store.ReleaseKey, error)
	ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error)
	// UploadImage stores an image after the server verified it against its
	// statement and a trusted release key.
	UploadImage(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error)
	Images(ctx context.Context, model string) ([]store.FirmwareImage, error)
	CreateRollout(ctx context.Context, spec ota.RolloutSpec) (RolloutCreated, error)
	Rollouts(ctx context.Context) ([]store.Rollout, error)
	RolloutStatus(ctx context.Context, id string) (ota.Status, error)
	RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error)
	PauseRollout(ctx context.Context, id, reason string) (store.Rollout, error)
	ResumeRollout(ctx context.Context, id string) (store.Rollout, error)
	AbortRollout(ctx context.Context, id, reason string) (store.Rollout, error)
}

// RolloutCreated is a new rollout and how its devices were chosen.
type RolloutCreated struct {
	Rollout store.Rollout      `json:"rollout"`
	Summary ota.RolloutSummary `json:"summary"`
}

// errNoOTA is returned by a Local without an OTA service.
var errNoOTA = errors.New("firmware updates are not available here")

func (l Local) ota() (*ota.Service, error) {
	if l.OTA == nil {
		return nil, errNoOTA
	}
	return l.OTA, nil
}

// TrustKey implements Firmware.
func (l Local) TrustKey(ctx context.Context, pubPEM []byte, name string) (store.ReleaseKey, error) {
	o, err := l.ota()
	if err != nil {
		return store.ReleaseKey{}, err
	}
	return o.Trust(ctx, pubPEM, name, actor)
}

// UntrustKey implements Firmware.
func (l Local) UntrustKey(ctx context.Context, id string) (store.ReleaseKey, error) {
	o, err := l.ota()
	if err != nil {
		return store.ReleaseKey{}, err
	}
	return o.Untrust(ctx, id, actor)
}

// ReleaseKeys implements Firmware.
func (l Local) ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.Keys(ctx)
}

// UploadImage implements Firmware.
func (l Local) UploadImage(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error) {
	o, err := l.ota()
	if err != nil {
		return store.FirmwareImage{}, err
	}
	return o.Upload(ctx, statement, image, actor)
}

// Images implements Firmware.
func (l Local) Images(ctx context.Context, model string) ([]store.FirmwareImage, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.Images(ctx, model)
}

// CreateRollout implements Firmware.
func (l Local) CreateRollout(ctx context.Context, spec ota.RolloutSpec) (RolloutCreated, error) {
	o, err := l.ota()
	if err != nil {
		return RolloutCreated{}, err
	}
	r, sum, err := o.CreateRollout(ctx, spec, actor)
	return RolloutCreated{Rollout: r, Summary: sum}, err
}

// Rollouts implements Firmware.
func (l Local) Rollouts(ctx context.Context) ([]store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.Rollouts(ctx)
}

// RolloutStatus implements Firmware.
func (l Local) RolloutStatus(ctx context.Context, id string) (ota.Status, error) {
	o, err := l.ota()
	if err != nil {
		return ota.Status{}, err
	}
	return o.RolloutStatus(ctx, id)
}

// RolloutDevices implements Firmware.
func (l Local) RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error) {
	o, err := l.ota()
	if err != nil {
		return nil, err
	}
	return o.RolloutDevices(ctx, id, f)
}

// PauseRollout implements Firmware.
func (l Local) PauseRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return store.Rollout{}, err
	}
	return o.Pause(ctx, id, reason, actor)
}

// ResumeRollout implements Firmware.
func (l Local) ResumeRollout(ctx context.Context, id string) (store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return store.Rollout{}, err
	}
	return o.Resume(ctx, id, actor)
}

// AbortRollout implements Firmware.
func (l Local) AbortRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	o, err := l.ota()
	if err != nil {
		return store.Rollout{}, err
	}
	return o.Abort(ctx, id, reason, actor)
}

// actor is who admin-socket and local actions are audited as: whoever can
// open the socket (mode 0600) or the data directory is the operator.
const actor = "operator"

// statementHeader carries the release statement with an upload, whose body
// is the image itself.
const statementHeader = "X-Warden-Statement"

func (h *handler) firmwareRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/firmware/keys", h.trustKey)
	mux.HandleFunc("GET /v1/firmware/keys", func(w http.ResponseWriter, r *http.Request) {
		ks, err := h.svc.ReleaseKeys(r.Context())
		h.reply(w, ks, err)
	})
	mux.HandleFunc("POST /v1/firmware/keys/{id}/revoke", func(w http.ResponseWriter, r *http.Request) {
		k, err := h.svc.UntrustKey(r.Context(), r.PathValue("id"))
		h.reply(w, k, err)
	})
	mux.HandleFunc("POST /v1/firmware/images", h.uploadImage)
	mux.HandleFunc("GET /v1/firmware/images", func(w http.ResponseWriter, r *http.Request) {
		imgs, err := h.svc.Images(r.Context(), r.URL.Query().Get("model"))
		h.reply(w, imgs, err)
	})
	mux.HandleFunc("POST /v1/rollouts", func(w http.ResponseWriter, r *http.Request) {
		var spec ota.RolloutSpec
		if err := decode(r, &spec); err != nil {
			h.fail(w, err)
			return
		}
		out, err := h.svc.CreateRollout(r.Context(), spec)
		h.reply(w, out, err)
	})
	mux.HandleFunc("GET /v1/rollouts", func(w http.ResponseWriter, r *http.Request) {
		rs, err := h.svc.Rollouts(r.Context())
		h.reply(w, rs, err)
	})
	mux.HandleFunc("GET /v1/rollouts/{id}", func(w http.ResponseWriter, r *http.Request) {
		st, err := h.svc.RolloutStatus(r.Context(), r.PathValue("id"))
		h.reply(w, st, err)
	})
	mux.HandleFunc("GET /v1/rollouts/{id}/devices", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var limit int
		if v := q.Get("limit"); v != "" {
			fmt.Sscan(v, &limit)
		}
		ds, err := h.svc.RolloutDevices(r.Context(), r.PathValue("id"), store.RolloutDeviceFilter{State: q.Get("state"), After: q.Get("after"), Limit: limit})
		h.reply(w, ds, err)
	})
	mux.HandleFunc("POST /v1/rollouts/{id}/{verb}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Reason string `json:"reason"`
		}
		if err := decode(r, &body); err != nil {
			h.fail(w, err)
			return
		}
		id := r.PathValue("id")
		var (
			ro  store.Rollout
			err error
		)
		switch r.PathValue("verb") {
		case "pause":
			ro, err = h.svc.PauseRollout(r.Context(), id, body.Reason)
		case "resume":
			ro, err = h.svc.ResumeRollout(r.Context(), id)
		case "abort":
			ro, err = h.svc.AbortRollout(r.Context(), id, body.Reason)
		default:
			http.NotFound(w, r)
			return
		}
		h.reply(w, ro, err)
	})
}

func (h *handler) reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (h *handler) trustKey(w http.ResponseWriter, r *http.Request) {
	var body struct {
		PublicKeyPEM string `json:"public_key_pem"`
		Name         string `json:"name"`
	}
	if err := decode(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	k, err := h.svc.TrustKey(r.Context(), []byte(body.PublicKeyPEM), body.Name)
	h.reply(w, k, err)
}

func (h *handler) uploadImage(w http.ResponseWriter, r *http.Request) {
	st, err := base64.StdEncoding.DecodeString(r.Header.Get(statementHeader))
	if err != nil || len(st) == 0 {
		h.fail(w, fmt.Errorf("%w: the %s header must hold the base64 release statement", registry.ErrInvalid, statementHeader))
		return
	}
	img, err := h.svc.UploadImage(r.Context(), st, r.Body)
	h.reply(w, img, err)
}

// TrustKey implements Firmware.
func (c *Client) TrustKey(ctx context.Context, pubPEM []byte, name string) (store.ReleaseKey, error) {
	var k store.ReleaseKey
	err := c.do(ctx, http.MethodPost, "/v1/firmware/keys", map[string]string{"public_key_pem": string(pubPEM), "name": name}, &k)
	return k, err
}

// UntrustKey implements Firmware.
func (c *Client) UntrustKey(ctx context.Context, id string) (store.ReleaseKey, error) {
	var k store.ReleaseKey
	err := c.do(ctx, http.MethodPost, "/v1/firmware/keys/"+url.PathEscape(id)+"/revoke", nil, &k)
	return k, err
}

// ReleaseKeys implements Firmware.
func (c *Client) ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error) {
	var ks []store.ReleaseKey
	err := c.do(ctx, http.MethodGet, "/v1/firmware/keys", nil, &ks)
	return ks, err
}

// UploadImage implements Firmware. The image streams to the server, which
// holds at most its configured maximum image size.
func (c *Client) UploadImage(ctx context.Context, statement []byte, image io.Reader) (store.FirmwareImage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://warden/v1/firmware/images", image)
	if err != nil {
		return store.FirmwareImage{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(statementHeader, base64.StdEncoding.EncodeToString(statement))
	// Uploads may be large; the client's short default timeout is for
	// small calls.
	hc := *c.http
	hc.Timeout = 10 * time.Minute
	resp, err := hc.Do(req)
	if err != nil {
		return store.FirmwareImage{}, err
	}
	defer resp.Body.Close()
	var img store.FirmwareImage
	return img, c.decodeResponse(resp, &img)
}

// Images implements Firmware.
func (c *Client) Images(ctx context.Context, model string) ([]store.FirmwareImage, error) {
	var out []store.FirmwareImage
	err := c.do(ctx, http.MethodGet, "/v1/firmware/images?model="+url.QueryEscape(model), nil, &out)
	return out, err
}

// CreateRollout implements Firmware.
func (c *Client) CreateRollout(ctx context.Context, spec ota.RolloutSpec) (RolloutCreated, error) {
	var out RolloutCreated
	err := c.do(ctx, http.MethodPost, "/v1/rollouts", spec, &out)
	return out, err
}

// Rollouts implements Firmware.
func (c *Client) Rollouts(ctx context.Context) ([]store.Rollout, error) {
	var out []store.Rollout
	err := c.do(ctx, http.MethodGet, "/v1/rollouts", nil, &out)
	return out, err
}

// RolloutStatus implements Firmware.
func (c *Client) RolloutStatus(ctx context.Context, id string) (ota.Status, error) {
	var out ota.Status
	err := c.do(ctx, http.MethodGet, "/v1/rollouts/"+url.PathEscape(id), nil, &out)
	return out, err
}

// RolloutDevices implements Firmware.
func (c *Client) RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error) {
	q := url.Values{"state": {f.State}, "after": {f.After}, "limit": {fmt.Sprint(f.Limit)}}
	var out []store.RolloutDevice
	err := c.do(ctx, http.MethodGet, "/v1/rollouts/"+url.PathEscape(id)+"/devices?"+q.Encode(), nil, &out)
	return out, err
}

func (c *Client) rolloutVerb(ctx context.Context, id, verb, reason string) (store.Rollout, error) {
	var out store.Rollout
	err := c.do(ctx, http.MethodPost, "/v1/rollouts/"+url.PathEscape(id)+"/"+verb, map[string]string{"reason": reason}, &out)
	return out, err
}

// PauseRollout implements Firmware.
func (c *Client) PauseRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	return c.rolloutVerb(ctx, id, "pause", reason)
}

// ResumeRollout implements Firmware.
func (c *Client) ResumeRollout(ctx context.Context, id string) (store.Rollout, error) {
	return c.rolloutVerb(ctx, id, "resume", "")
}

// AbortRollout implements Firmware.
func (c *Client) AbortRollout(ctx context.Context, id, reason string) (store.Rollout, error) {
	return c.rolloutVerb(ctx, id, "abort", reason)
}
