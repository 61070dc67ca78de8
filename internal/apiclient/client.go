// Package apiclient calls Warden's HTTPS JSON API (docs/openapi.yaml) from
// Go. It implements admin.Service, so the CLI acts on a running server
// through the same API, routes and checks as any other client: over the
// admin socket (a unix socket in the data directory, mode 0600, no token)
// or over HTTPS with an API token.
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// DefaultTimeout bounds each call but uploads.
const DefaultTimeout = 60 * time.Second

// maxResponse bounds an answer the client reads.
const maxResponse = 32 << 20

// Client calls the API. It is safe for concurrent use.
type Client struct {
	base  string // scheme://host, no trailing slash
	token string // "" on the admin socket
	http  *http.Client
}

var _ admin.Service = (*Client)(nil)

// DialSocket returns a client of the server listening on the admin socket
// at path, and (nil, nil) when no server runs there (no socket, or a stale
// one left by a killed server).
func DialSocket(ctx context.Context, path string) (*Client, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	c := &Client{base: "http://warden", http: &http.Client{
		Timeout: DefaultTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.WhoAmI(pctx); err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			return nil, nil // stale socket: no server
		}
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return c, nil
}

// Options configures a client of the HTTPS listener.
type Options struct {
	// URL is the API's base, e.g. https://warden.example.com:8443.
	URL string
	// Token is an API token (`warden token create`).
	Token string
	// RootCAs verifies the server's certificate; nil: the system roots.
	RootCAs *x509.CertPool
	// ServerName overrides the host name checked in the certificate.
	ServerName string
}

// New returns a client of the HTTPS API at o.URL. Only https URLs are
// accepted: the token must never cross the network in the clear.
func New(o Options) (*Client, error) {
	u := strings.TrimRight(o.URL, "/")
	if !strings.HasPrefix(u, "https://") || len(u) == len("https://") {
		return nil, fmt.Errorf("API URL %q: want https://HOST[:PORT]", o.URL)
	}
	if o.Token == "" {
		return nil, errors.New("an API token is required (create one with `warden token create` on the server)")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.RootCAs, ServerName: o.ServerName},
		ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	return &Client{base: u, token: o.Token, http: &http.Client{Timeout: DefaultTimeout, Transport: tr}}, nil
}

// Error is an error the API answered with. It matches, with errors.Is,
// the error kinds callers test for: store.ErrNotFound, store.ErrConflict,
// registry.ErrInvalid and ota.ErrRefused.
type Error struct {
	Status  int    // HTTP status
	Code    string // the API's error code, e.g. "not_found"
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is maps the API's codes to the errors the services return in-process.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case "not_found":
		return target == store.ErrNotFound
	case "conflict":
		return target == store.ErrConflict
	case "invalid", "too_large", "unsupported_media_type":
		return target == registry.ErrInvalid
	case "refused":
		return target == ota.ErrRefused
	}
	return false
}

// do sends a JSON request (in may be nil) and decodes the answer into
// out (may be nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(c.http, req, out)
}

func (c *Client) send(hc *http.Client, req *http.Request, out any) error {
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("read the API's answer to %s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode >= 300 {
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &eb) != nil || eb.Error.Message == "" {
			return &Error{Status: resp.StatusCode, Code: "http", Message: fmt.Sprintf("%s %s: the server answered %s", req.Method, req.URL.Path, resp.Status)}
		}
		return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode the API's answer to %s %s: %w", req.Method, req.URL.Path, err)
		}
	}
	return nil
}
