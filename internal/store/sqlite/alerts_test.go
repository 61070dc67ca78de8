package sqlite

import (
	"context"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// The alerts and quarantines tables refuse bad rows themselves, whoever
// writes them: the store's checks are not the only line.
func TestAlertSchemaChecks(t *testing.T) {
	st := openTemp(t)
	ctx := context.Background()
	c := store.Credential{Serial: "01", SubjectKind: identity.KindDevice, SubjectID: "d1", Fingerprint: strings.Repeat("a", 64),
		Certificate: []byte("cert"), CreatedAt: fromDB(1), NotBefore: fromDB(1), NotAfter: fromDB(2)}
	if err := st.CreateDevice(ctx, store.Device{ID: "d1", State: store.StateActive, CreatedAt: fromDB(1)}, c); err != nil {
		t.Fatal(err)
	}
	// alertRow is a valid alerts row with one column replaced.
	alertRow := func(col, val string) string {
		cols := []string{"id", "detector", "severity", "device_id", "service", "remote", "summary", "details", "response", "count", "created_at", "last_seen", "acknowledged_at", "acknowledged_by"}
		vals := []string{"'ab'", "'silence'", "'warning'", "'d1'", "''", "''", "'quiet'", "'{}'", "'none'", "1", "10", "10", "NULL", "''"}
		for i, c := range cols {
			if c == col {
				vals[i] = val
			}
		}
		return `INSERT INTO alerts (` + strings.Join(cols, ", ") + `) VALUES (` + strings.Join(vals, ", ") + `)`
	}
	if _, err := st.rw.ExecContext(ctx, alertRow("", "")); err != nil {
		t.Fatalf("valid row refused: %v", err)
	}
	if _, err := st.rw.ExecContext(ctx, `DELETE FROM alerts`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, stmt string }{
		{"ID not hex", alertRow("id", "'xyz'")},
		{"ID uppercase", alertRow("id", "'AB'")},
		{"ID too long", alertRow("id", "'"+strings.Repeat("a", 65)+"'")},
		{"no detector", alertRow("detector", "''")},
		{"unknown severity", alertRow("severity", "'urgent'")},
		{"device too long", alertRow("device_id", "'"+strings.Repeat("d", 257)+"'")},
		{"no summary", alertRow("summary", "''")},
		{"details not JSON", alertRow("details", "'count=1'")},
		{"details an array", alertRow("details", `'["a"]'`)},
		{"unknown response", alertRow("response", "'alert'")},
		{"zero count", alertRow("count", "0")},
		{"last seen before created", alertRow("last_seen", "9")},
		{"acknowledged by nobody", alertRow("acknowledged_at", "11")},
		{"acknowledger without time", alertRow("acknowledged_by", "'alice'")},
		{"quarantine of an unknown device", `INSERT INTO quarantines (device_id, reason, alert_id, actor, created_at) VALUES ('ghost', '', '', 'monitor', 1)`},
		{"quarantine without actor", `INSERT INTO quarantines (device_id, reason, alert_id, actor, created_at) VALUES ('d1', '', '', '', 1)`},
		{"quarantine alert not hex", `INSERT INTO quarantines (device_id, reason, alert_id, actor, created_at) VALUES ('d1', '', 'A1', 'monitor', 1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := st.rw.ExecContext(ctx, tc.stmt); err == nil {
				t.Errorf("schema accepted %s", tc.name)
			}
		})
	}
}
