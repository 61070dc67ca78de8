package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
)

// run runs the CLI with args and returns its output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd(strings.NewReader(""), &out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

func TestAlertsCommands(t *testing.T) {
	t.Chdir(t.TempDir()) // no ./warden.yaml by accident
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "WARDEN_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	data := filepath.Join(t.TempDir(), "data")
	if out, err := run(t, "init", "--data", data); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}

	// What the server's monitor would have stored.
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(data, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	cert := []byte("cert")
	sum := sha256.Sum256(cert)
	if err := st.CreateDevice(ctx, store.Device{ID: "0badf00d", State: store.StateActive, CreatedAt: now},
		store.Credential{Serial: "01", SubjectKind: identity.KindDevice, SubjectID: "0badf00d", Fingerprint: hex.EncodeToString(sum[:]),
			NotBefore: now, NotAfter: now.Add(time.Hour), Certificate: cert, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []store.Alert{
		{ID: "aa00000000000001", Detector: "cloned_identity", Severity: store.SeverityCritical, Device: "0badf00d",
			Summary: "device 0badf00d connected alternately from 192.0.2.1 and 198.51.100.7", Response: store.ResponseQuarantine,
			Count: 3, CreatedAt: now.Add(-48 * time.Hour), LastSeen: now.Add(-47 * time.Hour)},
		{ID: "aa00000000000002", Detector: "auth_failures_source", Severity: store.SeverityWarning, Remote: "10.0.0.5",
			Summary: "7 authentication failures in 1m from 10.0.0.5", Response: store.ResponseNone, Count: 1, CreatedAt: now.Add(-time.Hour)},
	} {
		if err := st.CreateAlert(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetQuarantine(ctx, store.Quarantine{DeviceID: "0badf00d", Reason: "alert aa00000000000001: cloned_identity",
		AlertID: "aa00000000000001", Actor: "warden", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	out, err := run(t, "alerts", "--data", data)
	if err != nil || !strings.Contains(out, "aa00000000000001") || !strings.Contains(out, "address:10.0.0.5") ||
		!strings.Contains(out, "7 authentication failures in 1m from 10.0.0.5") || !strings.Contains(out, "device:0badf00d") {
		t.Errorf("alerts: %v\n%s", err, out)
	}
	out, err = run(t, "alerts", "--data", data, "--since", "24h")
	if err != nil || strings.Contains(out, "aa00000000000001") || !strings.Contains(out, "aa00000000000002") {
		t.Errorf("alerts --since 24h: %v\n%s", err, out)
	}
	out, err = run(t, "alerts", "ack", "aa00000000000002", "--data", data, "--by", "alice")
	if err != nil || !strings.Contains(out, "Acknowledged aa00000000000002") {
		t.Errorf("alerts ack: %v\n%s", err, out)
	}
	if out, err := run(t, "alerts", "ack", "ffff", "--data", data); err == nil {
		t.Errorf("ack of a missing alert succeeded:\n%s", out)
	}
	out, err = run(t, "alerts", "--data", data, "--detector", "auth_failures_source")
	if err != nil || !strings.Contains(out, "No unacknowledged alerts.") {
		t.Errorf("after ack: %v\n%s", err, out)
	}
	out, err = run(t, "alerts", "--data", data, "--all", "--json", "--device", "0badf00d")
	var list []store.Alert
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Count != 3 {
		t.Errorf("alerts --all --json --device: %v\n%s", err, out)
	}
	out, err = run(t, "alerts", "--data", data, "--all", "--limit", "1")
	if err != nil || strings.Count(out, "aa0000000000000") != 1 {
		t.Errorf("alerts --limit 1: %v\n%s", err, out)
	}

	out, err = run(t, "alerts", "quarantined", "--data", data)
	if err != nil || !strings.Contains(out, "0badf00d") || !strings.Contains(out, "aa00000000000001") {
		t.Errorf("alerts quarantined: %v\n%s", err, out)
	}
	out, err = run(t, "alerts", "release", "0badf00d", "--data", data)
	if err != nil || !strings.Contains(out, "Released device 0badf00d") {
		t.Errorf("release: %v\n%s", err, out)
	}
	if out, err := run(t, "alerts", "release", "0badf00d", "--data", data); err == nil {
		t.Errorf("second release succeeded:\n%s", out)
	}
	out, err = run(t, "alerts", "quarantined", "--data", data)
	if err != nil || !strings.Contains(out, "No quarantined devices.") {
		t.Errorf("after release: %v\n%s", err, out)
	}
	// Both operator actions are audited.
	logb, err := os.ReadFile(filepath.Join(data, "audit.log"))
	if err != nil || !strings.Contains(string(logb), `"action":"alert.acknowledge"`) || !strings.Contains(string(logb), `"action":"device.release"`) {
		t.Errorf("audit log lacks the acknowledgement or the release: %v\n%s", err, logb)
	}
}
