package ota

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/sealing"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/otaproto"
)

// Authenticator decides whether a verified client certificate names an
// active principal (registry.Registry implements it).
type Authenticator interface {
	Authenticate(ctx context.Context, leaf *x509.Certificate) (identity.Principal, error)
}

// Opener opens sealed requests from envelope devices (sealing.Sealing).
type Opener interface {
	Policy(ctx context.Context, id string) (store.EnvelopePolicy, bool, error)
	OpenUplink(ctx context.Context, id, topic string, msg []byte) (sealing.Opened, error)
}

// EnvelopeContentType marks a request body that is a sealed envelope.
const EnvelopeContentType = "application/vnd.warden.envelope"

// Download URLs carry a capability so that envelope devices, which have no
// client certificate, can fetch the image they were offered (and resume
// with Range requests) without authenticating every request.
const urlLifetime = 6 * time.Hour

// URLSigner makes and checks download capabilities. Its key lives only in
// memory: after a restart old URLs fail and the device checks again.
type URLSigner struct {
	key  [32]byte
	base string // e.g. https://warden.example:8443
	now  func() time.Time
}

// NewURLSigner returns a signer for image URLs under base.
func NewURLSigner(base string) *URLSigner {
	u := &URLSigner{base: strings.TrimSuffix(base, "/"), now: time.Now}
	_, _ = rand.Read(u.key[:])
	return u
}

func (u *URLSigner) mac(device, sha string, exp int64) string {
	m := hmac.New(sha256.New, u.key[:])
	m.Write([]byte("warden-ota-image\x00" + device + "\x00" + sha + "\x00" + strconv.FormatInt(exp, 10)))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// URL returns the download URL of sha for device.
func (u *URLSigner) URL(device, sha string) string {
	exp := u.now().Add(urlLifetime).Unix()
	q := url.Values{"device": {device}, "expires": {strconv.FormatInt(exp, 10)}, "token": {u.mac(device, sha, exp)}}
	return u.base + otaproto.PathImages + sha + "?" + q.Encode()
}

func (u *URLSigner) check(q url.Values, sha string) (string, bool) {
	device, token := q.Get("device"), q.Get("token")
	exp, err := strconv.ParseInt(q.Get("expires"), 10, 64)
	if err != nil || device == "" || token == "" || u.now().Unix() > exp {
		return "", false
	}
	return device, hmac.Equal([]byte(token), []byte(u.mac(device, sha, exp)))
}

// HTTPOptions configure the device-facing HTTP endpoints.
type HTTPOptions struct {
	Auth    Authenticator // nil: no client-certificate authentication (plain listener)
	Opener  Opener        // nil: no envelope devices
	URLs    *URLSigner    // nil: image downloads need a client certificate
	Logger  *slog.Logger
	Audit   audit.Recorder
	Metrics *prometheus.CounterVec // warden_ota_http_requests_total{endpoint,outcome}; may be nil
	Name    string                 // listener name for logs and audit
}

// NewHTTPMetrics returns the request counter HTTPOptions.Metrics takes.
func NewHTTPMetrics(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warden_ota_http_requests_total", Help: "OTA HTTP requests, by endpoint and outcome.",
	}, []string{"endpoint", "outcome"})
	if reg != nil {
		reg.MustRegister(c)
	}
	return c
}

type httpAPI struct {
	s *Service
	o HTTPOptions
}

// HTTPHandler serves /ota/v1/check, /ota/v1/images/<sha256> and
// /ota/v1/status (docs/firmware.md, "Delivery").
func (s *Service) HTTPHandler(o HTTPOptions) http.Handler {
	if o.Logger == nil {
		o.Logger = s.log
	}
	if o.Audit == nil {
		o.Audit = s.audit
	}
	h := &httpAPI{s: s, o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+otaproto.PathCheck, h.check)
	mux.HandleFunc("GET "+otaproto.PathImages+"{sha}", h.image)
	mux.HandleFunc("HEAD "+otaproto.PathImages+"{sha}", h.image)
	mux.HandleFunc("POST "+otaproto.PathStatus, h.status)
	return mux
}

// Bounds on what a device may send: a report is small JSON, a sealed
// check query a few dozen bytes plus the envelope's overhead.
const (
	maxStatusBody  = 4096
	maxSealedQuery = 1024
)

// deny answers every refusal the same way (403, no detail) and records why.
func (h *httpAPI) deny(w http.ResponseWriter, r *http.Request, endpoint, device, reason string) {
	h.count(endpoint, "denied")
	h.o.Logger.Warn("OTA request refused", "endpoint", endpoint, "device", device, "reason", reason, "remote", r.RemoteAddr)
	h.o.Audit.Record(r.Context(), audit.Event{Action: "ota.http." + endpoint, Outcome: "denied", Actor: "device:" + device, Reason: reason,
		Remote: r.RemoteAddr, Listener: h.o.Name})
	http.Error(w, "forbidden", http.StatusForbidden)
}

func (h *httpAPI) count(endpoint, outcome string) {
	if h.o.Metrics != nil {
		h.o.Metrics.WithLabelValues(endpoint, outcome).Inc()
	}
}

func (h *httpAPI) fail(w http.ResponseWriter, endpoint, device string, err error) {
	switch {
	case errors.Is(err, ErrNotOffered), errors.Is(err, store.ErrConflict):
		h.count(endpoint, "conflict")
		http.Error(w, "conflict", http.StatusConflict)
	case errors.Is(err, ErrRefused) || isInvalid(err):
		h.count(endpoint, "invalid")
		http.Error(w, "bad request", http.StatusBadRequest)
	default:
		h.count(endpoint, "error")
		h.o.Logger.Error("OTA request failed", "endpoint", endpoint, "device", device, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
}

// certDevice returns the device a verified client certificate names.
func (h *httpAPI) certDevice(r *http.Request) (string, string) {
	if h.o.Auth == nil || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return "", "no-client-certificate"
	}
	p, err := h.o.Auth.Authenticate(r.Context(), r.TLS.VerifiedChains[0][0])
	if err != nil {
		return "", "certificate: " + err.Error()
	}
	if p.Kind != identity.KindDevice {
		return "", "not-a-device"
	}
	return p.ID, ""
}

// mustSeal refuses an unsealed request from a device whose envelope
// policy requires sealing even over TLS, as the relay and the MQTT
// transport do; a policy that cannot be read refuses too.
func (h *httpAPI) mustSeal(r *http.Request, device string) string {
	if h.o.Opener == nil {
		return ""
	}
	pol, ok, err := h.o.Opener.Policy(r.Context(), device)
	switch {
	case err != nil:
		h.o.Logger.Error("OTA: cannot look up the envelope policy; refusing", "device", device, "error", err)
		return "registry-error"
	case ok && pol.Required:
		return "envelope-required"
	}
	return ""
}

// opened authenticates a sealed request from an envelope device.
func (h *httpAPI) opened(r *http.Request, device, channel string, sealed []byte) ([]byte, string) {
	if h.o.Opener == nil {
		return nil, "no-envelope-support"
	}
	if identity.ValidateDeviceID(device) != nil {
		return nil, "bad-device-id"
	}
	o, err := h.o.Opener.OpenUplink(r.Context(), device, otaproto.Topic(device, channel), sealed)
	if err != nil {
		return nil, "envelope"
	}
	return o.Plaintext, ""
}

func (h *httpAPI) check(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	device, reason := h.certDevice(r)
	if sealed := q.Get("sealed"); sealed != "" {
		msg, err := base64.RawURLEncoding.DecodeString(sealed)
		if len(sealed) > maxSealedQuery {
			err = errors.New("too long")
		}
		if err != nil {
			h.deny(w, r, "check", q.Get("device"), "sealed-not-base64url")
			return
		}
		plain, why := h.opened(r, q.Get("device"), "check", msg)
		if why != "" {
			h.deny(w, r, "check", q.Get("device"), why)
			return
		}
		if q, err = url.ParseQuery(string(plain)); err != nil {
			h.deny(w, r, "check", q.Get("device"), "sealed-query")
			return
		}
		device, reason = r.URL.Query().Get("device"), ""
	} else if reason == "" && q.Get("device") != "" && q.Get("device") != device {
		reason = "device-mismatch"
	} else if reason == "" {
		reason = h.mustSeal(r, device)
	}
	if reason != "" {
		h.deny(w, r, "check", firstNonEmpty(device, q.Get("device")), reason)
		return
	}
	counter, err1 := strconv.ParseUint(q.Get("security_counter"), 10, 32)
	if q.Get("security_counter") == "" {
		counter, err1 = 0, nil
	}
	seq, err2 := strconv.ParseUint(q.Get("sequence"), 10, 64)
	if q.Get("sequence") == "" {
		seq, err2 = 0, nil
	}
	if err1 != nil || err2 != nil {
		h.count("check", "invalid")
		http.Error(w, "bad request: security_counter and sequence must be unsigned integers", http.StatusBadRequest)
		return
	}
	o, err := h.s.Current(r.Context(), device, q.Get("version"), uint32(counter), seq)
	if err != nil {
		h.fail(w, "check", device, err)
		return
	}
	if o == nil {
		h.count("check", "none")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	h.count("check", "offered")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(o)
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (h *httpAPI) image(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha")
	if !otaproto.ValidSHA256(sha) {
		h.count("image", "invalid")
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	device, reason := h.certDevice(r)
	if reason != "" && h.o.URLs != nil && r.URL.Query().Get("token") != "" {
		var ok bool
		if device, ok = h.o.URLs.check(r.URL.Query(), sha); ok {
			reason = ""
		} else {
			reason = "bad-or-expired-token"
		}
	}
	if reason != "" {
		h.deny(w, r, "image", firstNonEmpty(device, r.URL.Query().Get("device")), reason)
		return
	}
	img, err := h.s.CanFetch(r.Context(), device, sha)
	if err != nil {
		if errors.Is(err, ErrNotOffered) {
			h.deny(w, r, "image", device, "not-offered")
			return
		}
		h.fail(w, "image", device, err)
		return
	}
	b, err := h.s.OpenImage(sha)
	if err != nil {
		h.fail(w, "image", device, err)
		return
	}
	defer b.Close()
	if b.Size() != img.Size {
		h.fail(w, "image", device, errors.New("stored image file has the wrong size"))
		return
	}
	h.count("image", "served")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+sha+`"`)
	w.Header().Set("Cache-Control", "private, max-age=3600, immutable")
	// ServeContent answers Range and If-Range requests, so an interrupted
	// download resumes where it stopped.
	http.ServeContent(w, r, sha+".img", img.UploadedAt, b)
}

func (h *httpAPI) status(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxStatusBody+1))
	if err != nil || len(body) > maxStatusBody {
		h.count("status", "invalid")
		http.Error(w, "bad request: body too large", http.StatusRequestEntityTooLarge)
		return
	}
	device, reason := h.certDevice(r)
	if r.Header.Get("Content-Type") == EnvelopeContentType {
		d := r.URL.Query().Get("device")
		plain, why := h.opened(r, d, otaproto.TopicStatus, body)
		if why != "" {
			h.deny(w, r, "status", d, why)
			return
		}
		body, device, reason = plain, d, ""
	} else if reason == "" {
		reason = h.mustSeal(r, device)
	}
	if reason != "" {
		h.deny(w, r, "status", firstNonEmpty(device, r.URL.Query().Get("device")), reason)
		return
	}
	var rep otaproto.Report
	if err := decodeStrict(body, &rep); err != nil {
		h.count("status", "invalid")
		http.Error(w, "bad request: the body is not an OTA report", http.StatusBadRequest)
		return
	}
	o, err := h.s.Report(r.Context(), device, rep)
	if err != nil {
		h.fail(w, "status", device, err)
		return
	}
	h.count("status", "accepted")
	if o == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(o)
}
