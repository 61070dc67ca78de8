package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// maxRequestBody bounds every request on the socket.
const maxRequestBody = 1 << 20

// Listen opens the admin socket at path with mode 0600. A stale socket
// left by a killed server is replaced; a live one is an error (another
// server owns this data directory).
func Listen(path string) (net.Listener, error) {
	// sun_path holds 108 bytes on Linux (104 on BSDs) including the NUL.
	if len(path) > 103 {
		return nil, fmt.Errorf("admin socket path %s is %d bytes; unix sockets allow at most 103: use a shorter --data directory", path, len(path))
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s is in use: another warden serve runs on this data directory", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale admin socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict admin socket %s: %w", path, err)
	}
	return l, nil
}

// Handler serves Service over HTTP/JSON. Only the socket's file mode guards
// it: whoever can open the socket is the operator.
func Handler(svc Service, logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	h := &handler{svc: svc, log: logger}
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /v1/devices", h.addDevice)
	mux.HandleFunc("POST /v1/devices/issue", h.issueDevice)
	mux.HandleFunc("POST /v1/devices/register", h.registerDevice)
	mux.HandleFunc("GET /v1/devices", h.listDevices)
	mux.HandleFunc("GET /v1/devices/{id}", h.device)
	mux.HandleFunc("POST /v1/devices/{id}/disable", h.disable)
	mux.HandleFunc("POST /v1/devices/{id}/enable", h.enable)
	mux.HandleFunc("POST /v1/devices/{id}/revoke", h.revoke)
	mux.HandleFunc("PUT /v1/devices/{id}/tags", h.setTags)
	mux.HandleFunc("POST /v1/devices/{id}/envelope", h.enableEnvelope)
	mux.HandleFunc("POST /v1/devices/{id}/rekey", h.rekey)
	mux.HandleFunc("POST /v1/services", h.addService)
	mux.HandleFunc("GET /v1/services", h.listServices)
	mux.HandleFunc("POST /v1/services/{name}/revoke", h.revokeService)
	h.firmwareRoutes(mux)
	h.caRoutes(mux)
	return mux
}

type handler struct {
	svc Service
	log *slog.Logger
}

type addRequest struct {
	ID    string            `json:"id"`
	Model string            `json:"model,omitempty"`
	Tags  map[string]string `json:"tags,omitempty"`
	Role  string            `json:"role,omitempty"`
	CSR   []byte            `json:"csr"` // DER, base64 in JSON
	Cert  string            `json:"certificate_pem,omitempty"`
}

type reasonRequest struct {
	Reason string `json:"reason,omitempty"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	code := errorCode(err)
	status := map[string]int{codeNotFound: 404, codeConflict: 409, codeInvalid: 400, codeRefused: 422}[code]
	if status == 0 {
		status = 500
		h.log.Error("admin request failed", "error", err)
	}
	writeJSON(w, status, errorBody{Code: code, Message: err.Error()})
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", registry.ErrInvalid, err)
	}
	return nil
}

func (h *handler) addDevice(w http.ResponseWriter, r *http.Request) {
	var req addRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	res, err := h.svc.AddDevice(r.Context(), registry.DeviceSpec{ID: req.ID, Model: req.Model, Tags: req.Tags}, req.CSR)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

func (h *handler) issueDevice(w http.ResponseWriter, r *http.Request) {
	var req addRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	res, err := h.svc.IssueDevice(r.Context(), registry.DeviceSpec{ID: req.ID, Model: req.Model, Tags: req.Tags}, req.CSR)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (h *handler) registerDevice(w http.ResponseWriter, r *http.Request) {
	var req addRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	d, err := h.svc.RegisterDevice(r.Context(), registry.DeviceSpec{ID: req.ID, Model: req.Model, Tags: req.Tags}, req.CSR, req.Cert)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, d)
}

func (h *handler) addService(w http.ResponseWriter, r *http.Request) {
	var req addRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	res, err := h.svc.AddService(r.Context(), req.ID, req.Role, req.CSR)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

func (h *handler) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.DeviceFilter{State: store.DeviceState(q.Get("state")), Model: q.Get("model"), After: q.Get("after")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			h.fail(w, fmt.Errorf("%w: limit %q is not a number", registry.ErrInvalid, s))
			return
		}
		f.Limit = n
	}
	for _, kv := range q["tag"] {
		k, v, _ := cutEq(kv)
		if f.Tags == nil {
			f.Tags = map[string]string{}
		}
		f.Tags[k] = v
	}
	ds, err := h.svc.ListDevices(r.Context(), f)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ds)
}

func (h *handler) listServices(w http.ResponseWriter, r *http.Request) {
	ss, err := h.svc.ListServices(r.Context())
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ss)
}

func (h *handler) device(w http.ResponseWriter, r *http.Request) {
	d, err := h.svc.Device(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (h *handler) stateChange(w http.ResponseWriter, r *http.Request, do func(ctx context.Context, id, reason string) (store.Device, error)) {
	var req reasonRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			h.fail(w, err)
			return
		}
	}
	d, err := do(r.Context(), r.PathValue("id"), req.Reason)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (h *handler) disable(w http.ResponseWriter, r *http.Request) { h.stateChange(w, r, h.svc.Disable) }
func (h *handler) revoke(w http.ResponseWriter, r *http.Request)  { h.stateChange(w, r, h.svc.Revoke) }
func (h *handler) enable(w http.ResponseWriter, r *http.Request) {
	h.stateChange(w, r, func(ctx context.Context, id, _ string) (store.Device, error) { return h.svc.Enable(ctx, id) })
}

func (h *handler) revokeService(w http.ResponseWriter, r *http.Request) {
	var req reasonRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			h.fail(w, err)
			return
		}
	}
	s, err := h.svc.RevokeService(r.Context(), r.PathValue("name"), req.Reason)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

type envelopeRequest struct {
	Suite    string `json:"suite"`
	Required bool   `json:"required"`
}

func (h *handler) enableEnvelope(w http.ResponseWriter, r *http.Request) {
	var req envelopeRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	b, err := h.svc.EnableEnvelope(r.Context(), r.PathValue("id"), req.Suite, req.Required)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, b)
}

func (h *handler) rekey(w http.ResponseWriter, r *http.Request) {
	epoch, err := h.svc.Rekey(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]uint32{"epoch": epoch})
}

func cutEq(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '=' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Client implements Service against a running server's admin socket.
type Client struct {
	http *http.Client
}

var _ Service = (*Client)(nil)

// Dial returns a client if a server answers on the socket at path, and
// (nil, nil) if no server runs there.
func Dial(ctx context.Context, path string) (*Client, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	c := &Client{http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.do(pctx, http.MethodGet, "/v1/ping", nil, nil); err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			return nil, nil // stale socket: no server
		}
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return c, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://warden"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return c.decodeResponse(resp, out)
}

// decodeResponse turns an error answer back into the error the server
// had (so errors.Is works across the socket) or decodes the result.
func (c *Client) decodeResponse(resp *http.Response, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read admin response: %w", err)
	}
	if resp.StatusCode >= 300 {
		var eb errorBody
		if json.Unmarshal(data, &eb) != nil || eb.Message == "" {
			return fmt.Errorf("server answered %s", resp.Status)
		}
		switch eb.Code {
		case codeNotFound:
			return &remoteError{msg: eb.Message, is: store.ErrNotFound}
		case codeConflict:
			return &remoteError{msg: eb.Message, is: store.ErrConflict}
		case codeInvalid:
			return &remoteError{msg: eb.Message, is: registry.ErrInvalid}
		case codeRefused:
			return &remoteError{msg: eb.Message, is: ota.ErrRefused}
		}
		return errors.New(eb.Message)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode admin response: %w", err)
		}
	}
	return nil
}

type remoteError struct {
	msg string
	is  error
}

func (e *remoteError) Error() string        { return e.msg }
func (e *remoteError) Is(target error) bool { return target == e.is }

// AddDevice implements Service.
func (c *Client) AddDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (Issued, error) {
	var out Issued
	err := c.do(ctx, http.MethodPost, "/v1/devices", addRequest{ID: spec.ID, Model: spec.Model, Tags: spec.Tags, CSR: csrDER}, &out)
	return out, err
}

// IssueDevice implements Service.
func (c *Client) IssueDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte) (Issued, error) {
	var out Issued
	err := c.do(ctx, http.MethodPost, "/v1/devices/issue", addRequest{ID: spec.ID, Model: spec.Model, Tags: spec.Tags, CSR: csrDER}, &out)
	return out, err
}

// RegisterDevice implements Service.
func (c *Client) RegisterDevice(ctx context.Context, spec registry.DeviceSpec, csrDER []byte, certPEM string) (store.Device, error) {
	var out store.Device
	err := c.do(ctx, http.MethodPost, "/v1/devices/register", addRequest{ID: spec.ID, Model: spec.Model, Tags: spec.Tags, CSR: csrDER, Cert: certPEM}, &out)
	return out, err
}

// AddService implements Service.
func (c *Client) AddService(ctx context.Context, name, role string, csrDER []byte) (Issued, error) {
	var out Issued
	err := c.do(ctx, http.MethodPost, "/v1/services", addRequest{ID: name, Role: role, CSR: csrDER}, &out)
	return out, err
}

// Device implements Service.
func (c *Client) Device(ctx context.Context, id string) (registry.DeviceInfo, error) {
	var out registry.DeviceInfo
	err := c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id), nil, &out)
	return out, err
}

// ListDevices implements Service.
func (c *Client) ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.Model != "" {
		q.Set("model", f.Model)
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	for k, v := range f.Tags {
		q.Add("tag", k+"="+v)
	}
	var out []store.Device
	err := c.do(ctx, http.MethodGet, "/v1/devices?"+q.Encode(), nil, &out)
	return out, err
}

// ListServices implements Service.
func (c *Client) ListServices(ctx context.Context) ([]store.Service, error) {
	var out []store.Service
	err := c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
	return out, err
}

func (c *Client) change(ctx context.Context, id, verb, reason string) (store.Device, error) {
	var out store.Device
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/"+verb, reasonRequest{Reason: reason}, &out)
	return out, err
}

// Disable implements Service.
func (c *Client) Disable(ctx context.Context, id, reason string) (store.Device, error) {
	return c.change(ctx, id, "disable", reason)
}

// Enable implements Service.
func (c *Client) Enable(ctx context.Context, id string) (store.Device, error) {
	return c.change(ctx, id, "enable", "")
}

// Revoke implements Service.
func (c *Client) Revoke(ctx context.Context, id, reason string) (store.Device, error) {
	return c.change(ctx, id, "revoke", reason)
}

// EnableEnvelope implements Service.
func (c *Client) EnableEnvelope(ctx context.Context, id, suite string, required bool) (EnvelopeBundle, error) {
	var out EnvelopeBundle
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/envelope", envelopeRequest{Suite: suite, Required: required}, &out)
	return out, err
}

// Rekey implements Service.
func (c *Client) Rekey(ctx context.Context, id string) (uint32, error) {
	var out map[string]uint32
	err := c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/rekey", nil, &out)
	return out["epoch"], err
}

// RevokeService implements Service.
func (c *Client) RevokeService(ctx context.Context, name, reason string) (store.Service, error) {
	var out store.Service
	err := c.do(ctx, http.MethodPost, "/v1/services/"+url.PathEscape(name)+"/revoke", reasonRequest{Reason: reason}, &out)
	return out, err
}
