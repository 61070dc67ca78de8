package monitor

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/store"
)

// Webhook headers (docs/monitoring.md).
const (
	// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256>" over
	// "<t>.<body>", the scheme Stripe uses: the timestamp is signed, so a
	// captured request cannot be replayed later than the receiver's
	// tolerance.
	SignatureHeader = "Warden-Signature"
	// DeliveryHeader carries the alert ID, so that a receiver can drop a
	// retried delivery it has already handled.
	DeliveryHeader = "Warden-Delivery"
)

// Webhook defaults and bounds.
const (
	// MinSecretLength is the shortest signing secret accepted: 128 bits.
	MinSecretLength = 16
	// maxSecretFile bounds the secret file; a secret is a line of text.
	maxSecretFile = 4096
	// DefaultSignatureTolerance is how far VerifySignature accepts a
	// timestamp from the receiver's clock.
	DefaultSignatureTolerance = 5 * time.Minute
	defaultAttempts           = 5
	defaultBackoff            = time.Second
	maxBackoff                = time.Minute
	defaultWebhookTimeout     = 10 * time.Second
	// webhookQueue bounds the alerts waiting for delivery; beyond it they
	// are counted as failures, so that a dead receiver costs no memory.
	webhookQueue = 256
)

// Webhook POSTs every new alert as JSON to URL, signed with Secret.
// Deliveries run on their own goroutine (started by Run), one at a time,
// with bounded retries and exponential backoff.
type Webhook struct {
	URL    string
	Secret []byte
	// Client sends the requests; nil: a client with a 10 s timeout that
	// follows no redirect (a redirected POST would lose its body).
	Client *http.Client
	// MaxAttempts bounds the attempts per alert; 0 means 5.
	MaxAttempts int
	// Backoff is the wait before the second attempt, doubling (with
	// jitter) up to a minute; 0 means 1 s.
	Backoff time.Duration
}

// NewWebhook builds the webhook the configuration describes, reading its
// secret from the secret file. Nil (and no error) when no URL is set.
func NewWebhook(c config.MonitorWebhook) (*Webhook, error) {
	if c.URL == "" {
		return nil, nil
	}
	secret, err := ReadSecretFile(c.SecretFile)
	if err != nil {
		return nil, err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = defaultWebhookTimeout
	}
	w := &Webhook{URL: c.URL, Secret: secret, Client: newClient(timeout), MaxAttempts: c.MaxAttempts}
	if err := w.check(); err != nil {
		return nil, err
	}
	return w, nil
}

func newClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the webhook answered with a redirect; configure the final URL")
		},
	}
}

// ReadSecretFile reads a webhook signing secret: the file's content
// without surrounding white space (a trailing newline), at least
// MinSecretLength bytes. Like the master key, the file must not be
// accessible by group or others.
func ReadSecretFile(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("monitor: the webhook needs a secret: set monitor.webhook.secret_file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("monitor: read webhook secret: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("monitor: read webhook secret: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("monitor: webhook secret %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("monitor: webhook secret %s is accessible by group or others (mode %04o); restrict it with: chmod 600 %s",
			path, info.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fmt.Errorf("monitor: read webhook secret %s: %w", path, err)
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("monitor: webhook secret %s is larger than %d bytes; it should hold one line", path, maxSecretFile)
	}
	secret := bytes.TrimSpace(b)
	if len(secret) < MinSecretLength {
		clear(b)
		return nil, fmt.Errorf("monitor: webhook secret %s holds %d bytes, fewer than %d; generate one with: head -c 32 /dev/urandom | base64 > %s",
			path, len(secret), MinSecretLength, path)
	}
	out := bytes.Clone(secret)
	clear(b)
	return out, nil
}

func (w *Webhook) check() error {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("monitor: the webhook URL must be an http:// or https:// URL with a host")
	}
	if len(w.Secret) < MinSecretLength {
		return fmt.Errorf("monitor: the webhook secret has %d bytes; at least %d are needed", len(w.Secret), MinSecretLength)
	}
	return nil
}

// endpoint is the webhook's URL as logs show it: scheme and host only, as
// the path or query of some receivers is itself a credential.
func (w *Webhook) endpoint() string {
	u, err := url.Parse(w.URL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Scheme + "://" + u.Host
}

// Sign returns the SignatureHeader value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Errors of VerifySignature.
var (
	ErrSignatureFormat = errors.New("malformed " + SignatureHeader + " header")
	ErrSignatureStale  = errors.New("signature timestamp outside the tolerance")
	ErrSignatureWrong  = errors.New("no signature matches")
)

// maxSignatureHeader bounds the header VerifySignature parses.
const maxSignatureHeader = 4096

// VerifySignature checks a SignatureHeader value for body, as a receiver
// written in Go would: the timestamp must be within tolerance of now
// (DefaultSignatureTolerance if 0) and one of the v1 signatures (there are
// several while a secret is being replaced) must match, compared in
// constant time. Unknown schemes are ignored.
func VerifySignature(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultSignatureTolerance
	}
	if len(header) > maxSignatureHeader {
		return ErrSignatureFormat
	}
	var (
		ts   string
		sigs [][]byte
	)
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrSignatureFormat
		}
		switch k {
		case "t":
			if ts != "" {
				return ErrSignatureFormat
			}
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != sha256.Size {
				return ErrSignatureFormat
			}
			sigs = append(sigs, sig)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return ErrSignatureFormat
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sec < 0 || ts != strconv.FormatInt(sec, 10) {
		return ErrSignatureFormat
	}
	age := now.Unix() - sec
	if age < 0 {
		age = -age
	}
	if age < 0 || age > int64(tolerance/time.Second) {
		return ErrSignatureStale
	}
	want := mac(secret, ts, body)
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			return nil
		}
	}
	return ErrSignatureWrong
}

// deliveryError says whether a failed attempt is worth repeating.
type deliveryError struct {
	err       error
	permanent bool
}

func (e *deliveryError) Error() string { return e.err.Error() }
func (e *deliveryError) Unwrap() error { return e.err }

// Send makes one delivery attempt of a, signed at now.
func (w *Webhook) Send(ctx context.Context, a store.Alert, now time.Time) error {
	body, err := json.Marshal(a)
	if err != nil {
		return &deliveryError{fmt.Errorf("encode alert %s: %w", a.ID, err), true}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return &deliveryError{errors.New("build the request: the webhook URL is not usable"), true}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "warden-monitor")
	req.Header.Set(SignatureHeader, Sign(w.Secret, now, body))
	req.Header.Set(DeliveryHeader, a.ID)
	client := w.Client
	if client == nil {
		client = newClient(defaultWebhookTimeout)
	}
	resp, err := client.Do(req)
	if err != nil {
		// A *url.Error repeats the URL, whose path may be a credential.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &deliveryError{err: err}
	}
	defer resp.Body.Close()
	// Drain a little so that the connection can be reused; never more.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return &deliveryError{err: fmt.Errorf("the receiver answered %s", resp.Status)}
	default:
		return &deliveryError{fmt.Errorf("the receiver answered %s", resp.Status), true}
	}
}

// deliver sends a with retries, and reports whether it got through.
func (w *Webhook) deliver(ctx context.Context, a store.Alert, clock func() time.Time, log *slog.Logger) bool {
	attempts := w.MaxAttempts
	if attempts <= 0 {
		attempts = defaultAttempts
	}
	backoff := w.Backoff
	if backoff <= 0 {
		backoff = defaultBackoff
	}
	for i := 1; ; i++ {
		err := w.Send(ctx, a, clock())
		if err == nil {
			return true
		}
		var de *deliveryError
		permanent := errors.As(err, &de) && de.permanent
		log.Warn("monitor: webhook delivery failed", "alert", a.ID, "endpoint", w.endpoint(), "attempt", i, "of", attempts, "error", err)
		if permanent || i >= attempts || ctx.Err() != nil {
			return false
		}
		// Full jitter between half and all of the backoff, so that
		// several Wardens do not retry in step.
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}
