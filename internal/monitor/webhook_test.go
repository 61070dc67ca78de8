package monitor

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/store"
)

var testSecret = []byte("whsec-0123456789abcdef-test")

// receiver is a webhook endpoint that checks every request's signature
// the way docs/monitoring.md tells receivers to, and answers with the
// statuses it is given, then 204.
type receiver struct {
	mu       sync.Mutex
	statuses []int
	got      []store.Alert
	attempts int
	problems []string
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	body, _ := io.ReadAll(req.Body)
	sig := req.Header.Get(SignatureHeader)
	// By hand, as a receiver in another language would.
	var ts, v1 string
	for _, part := range strings.Split(sig, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = v
		}
	}
	h := hmac.New(sha256.New, testSecret)
	h.Write([]byte(ts + "." + string(body)))
	if want := hex.EncodeToString(h.Sum(nil)); v1 != want {
		r.problems = append(r.problems, "signature "+sig+" does not match "+want)
	}
	if err := VerifySignature(testSecret, sig, body, time.Now(), 0); err != nil {
		r.problems = append(r.problems, "VerifySignature: "+err.Error())
	}
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		r.problems = append(r.problems, "bad request "+req.Method+" "+req.Header.Get("Content-Type"))
	}
	var a store.Alert
	if err := json.Unmarshal(body, &a); err != nil {
		r.problems = append(r.problems, "body: "+err.Error())
	}
	if req.Header.Get(DeliveryHeader) != a.ID {
		r.problems = append(r.problems, "delivery header "+req.Header.Get(DeliveryHeader)+" is not the alert ID "+a.ID)
	}
	if len(r.statuses) > 0 {
		st := r.statuses[0]
		r.statuses = r.statuses[1:]
		w.WriteHeader(st)
		return
	}
	r.got = append(r.got, a)
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.problems {
		t.Error(p)
	}
}

func testAlert() store.Alert {
	return store.Alert{ID: "00112233aabbccdd", Detector: DetectorClonedIdentity, Severity: store.SeverityCritical, Device: "dev-1",
		Summary: "device dev-1 connected alternately", Details: map[string]string{"switches": "2"}, Response: store.ResponseNone,
		Count: 1, CreatedAt: t0, LastSeen: t0}
}

func TestWebhookDelivery(t *testing.T) {
	tests := []struct {
		name      string
		statuses  []int
		delivered bool
		attempts  int
	}{
		{"first attempt", nil, true, 1},
		{"retried after server errors and throttling", []int{503, 429, 500}, true, 4},
		{"a client error is final", []int{400}, false, 1},
		{"every attempt fails", []int{502, 502, 502, 502, 502, 502}, false, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rcv := &receiver{statuses: tt.statuses}
			srv := httptest.NewServer(rcv)
			defer srv.Close()
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			w := &Webhook{URL: srv.URL + "/hooks/T0SECRETPATH", Secret: testSecret, Backoff: time.Millisecond}
			ok := w.deliver(t.Context(), testAlert(), time.Now, log)
			if ok != tt.delivered || rcv.attempts != tt.attempts {
				t.Errorf("delivered %v after %d attempts, want %v after %d", ok, rcv.attempts, tt.delivered, tt.attempts)
			}
			rcv.check(t)
			if tt.delivered && (len(rcv.got) != 1 || rcv.got[0].Summary != testAlert().Summary || !rcv.got[0].CreatedAt.Equal(t0)) {
				t.Errorf("received %+v", rcv.got)
			}
			// Logs name the endpoint, never the secret or the path.
			if s := logs.String(); strings.Contains(s, string(testSecret)) || strings.Contains(s, "T0SECRETPATH") {
				t.Errorf("log leaks the secret or the URL path:\n%s", s)
			}
			if !tt.delivered && !strings.Contains(logs.String(), "webhook delivery failed") {
				t.Errorf("failure not logged:\n%s", logs.String())
			}
		})
	}
}

func TestWebhookUnreachableAndRedirect(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("/elsewhere", http.StatusFound))
	defer srv.Close()
	w := &Webhook{URL: srv.URL, Secret: testSecret, MaxAttempts: 2, Backoff: time.Millisecond}
	if err := w.Send(t.Context(), testAlert(), time.Now()); err == nil {
		t.Error("a redirect counted as delivered")
	}
	srv.Close()
	if w.deliver(t.Context(), testAlert(), time.Now, quietLogger()) {
		t.Error("delivered to a closed server")
	}
	// A cancelled context stops the retries at once.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	w.MaxAttempts, w.Backoff = 20, time.Hour
	start := time.Now()
	if w.deliver(ctx, testAlert(), time.Now, quietLogger()) || time.Since(start) > 5*time.Second {
		t.Error("deliver did not give up on a cancelled context")
	}
}

// Through the monitor: a new alert is sent, a repeat is not, and failures
// are counted.
func TestMonitorSendsWebhooks(t *testing.T) {
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	h := newHarness(t, harnessOptions{webhook: &Webhook{URL: srv.URL, Secret: testSecret, Backoff: time.Millisecond}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.m.Run(ctx) }()
	clone(h, "dev-1")
	clone(h, "dev-1")
	deadline := time.Now().Add(5 * time.Second)
	for {
		rcv.mu.Lock()
		n := len(rcv.got)
		rcv.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no webhook received")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
	rcv.check(t)
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.got) != 1 || rcv.got[0].Detector != DetectorClonedIdentity || rcv.got[0].Device != "dev-1" {
		t.Errorf("received %+v, want one cloned_identity alert", rcv.got)
	}
	if v := counterValue(t, h.m.metrics.webhookFails); v != 0 {
		t.Errorf("warden_webhook_failures_total = %v", v)
	}
}

func TestVerifySignature(t *testing.T) {
	body := []byte(`{"id":"ab"}`)
	now := time.Unix(1_800_000_000, 0)
	good := Sign(testSecret, now, body)
	other := Sign([]byte("another-secret-of-16+"), now, body)
	_, otherSig, _ := strings.Cut(other, ",")
	for _, tc := range []struct {
		name   string
		header string
		body   []byte
		at     time.Time
		want   error
	}{
		{"good", good, body, now, nil},
		{"clock skew within tolerance", good, body, now.Add(-4 * time.Minute), nil},
		{"old", good, body, now.Add(6 * time.Minute), ErrSignatureStale},
		{"from the future", good, body, now.Add(-6 * time.Minute), ErrSignatureStale},
		{"body changed", good, []byte(`{"id":"ac"}`), now, ErrSignatureWrong},
		{"other secret", other, body, now, ErrSignatureWrong},
		{"one of two signatures matches", good + "," + otherSig, body, now, nil},
		{"unknown scheme ignored", good + ",v0=abc", body, now, nil},
		{"timestamp changed", strings.Replace(good, "t=1800000000", "t=1800000001", 1), body, now, ErrSignatureWrong},
		{"no timestamp", otherSig, body, now, ErrSignatureFormat},
		{"no signature", "t=1800000000", body, now, ErrSignatureFormat},
		{"two timestamps", "t=1," + good, body, now, ErrSignatureFormat},
		{"signature not hex", "t=1800000000,v1=zz", body, now, ErrSignatureFormat},
		{"signature short", "t=1800000000,v1=abcd", body, now, ErrSignatureFormat},
		{"timestamp with sign", strings.Replace(good, "t=", "t=+", 1), body, now, ErrSignatureFormat},
		{"empty", "", body, now, ErrSignatureFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifySignature(testSecret, tc.header, tc.body, tc.at, 0); !errors.Is(err, tc.want) {
				t.Errorf("VerifySignature(%q) = %v, want %v", tc.header, err, tc.want)
			}
		})
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "  "+string(testSecret)+"\n", 0o600)
	got, err := ReadSecretFile(good)
	if err != nil || !bytes.Equal(got, testSecret) {
		t.Errorf("ReadSecretFile = %q, %v; want the secret without white space", got, err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"short", write("short", "0123456789\n", 0o600), "fewer than 16"},
		{"large", write("large", strings.Repeat("a", 5000), 0o600), "larger than"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"directory", dir, "not a regular file"},
		{"empty path", "", "secret_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ReadSecretFile(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadSecretFile = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if runtime.GOOS != "windows" {
		if _, err := ReadSecretFile(write("open", string(testSecret), 0o644)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("ReadSecretFile(mode 0644) = %v, want a refusal", err)
		}
	}

	w, err := NewWebhook(config.MonitorWebhook{URL: "https://alerts.example.com/x", SecretFile: good, Timeout: 3 * time.Second, MaxAttempts: 2})
	if err != nil || w == nil || w.URL != "https://alerts.example.com/x" || !bytes.Equal(w.Secret, testSecret) || w.Client.Timeout != 3*time.Second || w.MaxAttempts != 2 {
		t.Errorf("NewWebhook = %+v, %v", w, err)
	}
	if w, err := NewWebhook(config.MonitorWebhook{}); w != nil || err != nil {
		t.Errorf("NewWebhook(no URL) = %+v, %v; want nil, nil", w, err)
	}
	if _, err := New(t.Context(), Options{Store: newHarness(t, harnessOptions{}).st, Config: config.DefaultMonitor(),
		Webhook: &Webhook{URL: "https://a.example", Secret: []byte("short")}}); err == nil {
		t.Error("New accepted a webhook with a short secret")
	}
}
