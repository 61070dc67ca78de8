package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

var _ store.AlertStore = (*Store)(nil)

// --- alerts ---

const alertColumns = `id, detector, severity, device_id, service, remote, summary, details, response, count,
created_at, last_seen, acknowledged_at, acknowledged_by`

// checkText refuses what PostgreSQL would refuse in a TEXT column (invalid
// UTF-8, NUL), so that every backend accepts the same alerts, and bounds
// its length in bytes.
func checkText(what, s string, max int) error {
	switch {
	case len(s) > max:
		return fmt.Errorf("%s is %d bytes; at most %d are stored", what, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", what)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s contains a NUL byte", what)
	}
	return nil
}

// checkAlert catches programming errors in a new alert before they reach
// the table, and defaults LastSeen to CreatedAt.
func checkAlert(a *store.Alert) error {
	if a.ID == "" || len(a.ID) > store.MaxAlertIDLength || !isLowerHex(a.ID) {
		return fmt.Errorf("alert %q: the ID must be 1 to %d lowercase hex digits", a.ID, store.MaxAlertIDLength)
	}
	if a.Detector == "" {
		return fmt.Errorf("alert %s: no detector", a.ID)
	}
	switch a.Severity {
	case store.SeverityInfo, store.SeverityWarning, store.SeverityCritical:
	default:
		return fmt.Errorf("alert %s: unknown severity %q (want %s, %s or %s)", a.ID, a.Severity, store.SeverityInfo, store.SeverityWarning, store.SeverityCritical)
	}
	switch a.Response {
	case store.ResponseNone, store.ResponseDisconnect, store.ResponseQuarantine:
	default:
		return fmt.Errorf("alert %s: unknown response %q (want %s, %s or %s)", a.ID, a.Response, store.ResponseNone, store.ResponseDisconnect, store.ResponseQuarantine)
	}
	if a.Summary == "" {
		return fmt.Errorf("alert %s: no summary", a.ID)
	}
	for _, f := range []struct {
		what string
		v    string
		max  int
	}{
		{"detector", a.Detector, store.MaxAlertFieldLength},
		{"device", a.Device, store.MaxAlertFieldLength},
		{"service", a.Service, store.MaxAlertFieldLength},
		{"remote", a.Remote, store.MaxAlertFieldLength},
		{"summary", a.Summary, store.MaxAlertSummaryLength},
	} {
		if err := checkText(f.what, f.v, f.max); err != nil {
			return fmt.Errorf("alert %s: %w", a.ID, err)
		}
	}
	if len(a.Details) > store.MaxAlertDetails {
		return fmt.Errorf("alert %s: %d details; at most %d are stored", a.ID, len(a.Details), store.MaxAlertDetails)
	}
	for k, v := range a.Details {
		if err := checkText("details key", k, store.MaxAlertDetailLength); err != nil {
			return fmt.Errorf("alert %s: %w", a.ID, err)
		}
		if err := checkText("details value of "+k, v, store.MaxAlertDetailLength); err != nil {
			return fmt.Errorf("alert %s: %w", a.ID, err)
		}
	}
	if a.Count < 1 {
		return fmt.Errorf("alert %s: count %d; an alert holds at least one finding", a.ID, a.Count)
	}
	if a.CreatedAt.IsZero() {
		return fmt.Errorf("alert %s: no creation time", a.ID)
	}
	if a.LastSeen.IsZero() {
		a.LastSeen = a.CreatedAt
	}
	if toDB(a.LastSeen) < toDB(a.CreatedAt) {
		return fmt.Errorf("alert %s: last seen %s before its creation %s", a.ID, a.LastSeen.Format(time.RFC3339Nano), a.CreatedAt.Format(time.RFC3339Nano))
	}
	if a.Acknowledged() || a.AcknowledgedBy != "" {
		return fmt.Errorf("alert %s: an alert is created unacknowledged; acknowledge it with AcknowledgeAlert", a.ID)
	}
	return nil
}

func queryAlerts(ctx context.Context, q querier, query string, args ...any) ([]store.Alert, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query alerts: %w", err)
	}
	defer rows.Close()
	out := []store.Alert{}
	for rows.Next() {
		var (
			a             store.Alert
			details       string
			created, seen int64
			acked         sql.NullInt64
		)
		if err := rows.Scan(&a.ID, &a.Detector, &a.Severity, &a.Device, &a.Service, &a.Remote, &a.Summary, &details,
			&a.Response, &a.Count, &created, &seen, &acked, &a.AcknowledgedBy); err != nil {
			return nil, fmt.Errorf("read alert row: %w", err)
		}
		if err := json.Unmarshal([]byte(details), &a.Details); err != nil {
			return nil, fmt.Errorf("alert %s: stored details: %w", a.ID, err)
		}
		if a.Details == nil {
			a.Details = map[string]string{}
		}
		a.CreatedAt, a.LastSeen, a.AcknowledgedAt = fromDB(created), fromDB(seen), timeFromNull(acked)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read alerts: %w", err)
	}
	return out, nil
}

func getAlert(ctx context.Context, q querier, id string) (store.Alert, error) {
	as, err := queryAlerts(ctx, q, `SELECT `+alertColumns+` FROM alerts WHERE id = $1`, id)
	if err != nil {
		return store.Alert{}, fmt.Errorf("get alert %q: %w", id, err)
	}
	if len(as) == 0 {
		return store.Alert{}, fmt.Errorf("alert %q: %w", id, store.ErrNotFound)
	}
	return as[0], nil
}

// CreateAlert implements store.AlertStore.
func (s *Store) CreateAlert(ctx context.Context, a store.Alert) error {
	if err := checkAlert(&a); err != nil {
		return fmt.Errorf("create alert: %w", err)
	}
	details := a.Details
	if details == nil {
		details = map[string]string{}
	}
	b, err := json.Marshal(details)
	if err != nil {
		return fmt.Errorf("create alert %s: encode details: %w", a.ID, err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM alerts WHERE id = $1`, a.ID); err != nil {
			return fmt.Errorf("create alert %s: the ID %w", a.ID, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO alerts (`+alertColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, '')`,
			a.ID, a.Detector, a.Severity, a.Device, a.Service, a.Remote, a.Summary, string(b), a.Response, int64(a.Count),
			toDB(a.CreatedAt), toDB(a.LastSeen)); err != nil {
			return insertError("create alert", a.ID, err)
		}
		return nil
	})
}

// GetAlert implements store.AlertStore.
func (s *Store) GetAlert(ctx context.Context, id string) (store.Alert, error) {
	return getAlert(ctx, s.ro, id)
}

// UpdateAlert implements store.AlertStore. The acknowledgement check is in
// the UPDATE, so an acknowledgement by another process (the CLI) between
// the monitor's decision and the write is never overwritten.
func (s *Store) UpdateAlert(ctx context.Context, id string, add int, lastSeen time.Time) (store.Alert, error) {
	if add < 1 {
		return store.Alert{}, fmt.Errorf("update alert %s: add %d; add at least one finding", id, add)
	}
	var a store.Alert
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE alerts SET count = count + $1, last_seen = max(last_seen, $2)
WHERE id = $3 AND acknowledged_at IS NULL`, int64(add), toDB(lastSeen), id)
		if err != nil {
			return fmt.Errorf("update alert %s: %w", id, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("update alert %s: %w", id, err)
		}
		a, err = getAlert(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("update alert %s: acknowledged by %s at %s; raise a new alert: %w",
				id, a.AcknowledgedBy, a.AcknowledgedAt.Format(time.RFC3339), store.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return store.Alert{}, err
	}
	return a, nil
}

// ListAlerts implements store.AlertStore.
func (s *Store) ListAlerts(ctx context.Context, f store.AlertFilter) ([]store.Alert, error) {
	var out []store.Alert
	err := s.read(ctx, func(tx *sql.Tx) error {
		// Newest first: the cursor is the (created_at, id) of the last
		// alert of the previous page.
		curCreated, curID := int64(1<<63-1), "\U0010FFFF"
		if f.Before != "" {
			if err := tx.QueryRowContext(ctx, `SELECT created_at, id FROM alerts WHERE id = $1`, f.Before).Scan(&curCreated, &curID); err != nil {
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("list alerts: the cursor alert %q: %w (it may have been purged; list again from the start)", f.Before, store.ErrNotFound)
				}
				return fmt.Errorf("list alerts: read the cursor alert %q: %w", f.Before, err)
			}
		}
		since := int64(-1 << 63)
		if !f.Since.IsZero() {
			since = toDB(f.Since)
		}
		unacked := 0
		if f.Unacknowledged {
			unacked = 1
		}
		// Fixed text: the filter reaches the database only as arguments.
		var err error
		out, err = queryAlerts(ctx, tx, `SELECT `+alertColumns+` FROM alerts
WHERE (created_at, id) < ($1, $2) AND last_seen >= $3 AND ($4 = '' OR detector = $4) AND ($5 = '' OR device_id = $5)
  AND ($6 = 0 OR acknowledged_at IS NULL)
ORDER BY created_at DESC, id DESC LIMIT $7`, curCreated, curID, since, f.Detector, f.Device, unacked, int64(f.PageSize()))
		if err != nil {
			return fmt.Errorf("list alerts: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AcknowledgeAlert implements store.AlertStore.
func (s *Store) AcknowledgeAlert(ctx context.Context, id, by string, at time.Time) (store.Alert, error) {
	if by == "" {
		return store.Alert{}, fmt.Errorf("acknowledge alert %s: say who acknowledges it", id)
	}
	if err := checkText("acknowledged by", by, store.MaxAlertFieldLength); err != nil {
		return store.Alert{}, fmt.Errorf("acknowledge alert %s: %w", id, err)
	}
	var a store.Alert
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE alerts SET acknowledged_at = $1, acknowledged_by = $2
WHERE id = $3 AND acknowledged_at IS NULL`, toDB(at), by, id); err != nil {
			return fmt.Errorf("acknowledge alert %s: %w", id, err)
		}
		var err error
		a, err = getAlert(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("acknowledge: %w", err)
		}
		return nil
	})
	if err != nil {
		return store.Alert{}, err
	}
	return a, nil
}

// PurgeAlerts implements store.AlertStore.
func (s *Store) PurgeAlerts(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM alerts WHERE last_seen < $1`, toDB(before))
		if err != nil {
			return fmt.Errorf("purge alerts: %w", err)
		}
		n, err = res.RowsAffected()
		if err != nil {
			return fmt.Errorf("purge alerts: %w", err)
		}
		return nil
	})
	return int(n), err
}

// --- quarantines ---

const quarantineColumns = `device_id, reason, alert_id, actor, created_at`

// checkQuarantine catches programming errors before they reach the table.
func checkQuarantine(q store.Quarantine) error {
	if err := identity.ValidateDeviceID(q.DeviceID); err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	if q.AlertID != "" && (len(q.AlertID) > store.MaxAlertIDLength || !isLowerHex(q.AlertID)) {
		return fmt.Errorf("quarantine of %q: alert ID %q is not 1 to %d lowercase hex digits", q.DeviceID, q.AlertID, store.MaxAlertIDLength)
	}
	if q.Actor == "" {
		return fmt.Errorf("quarantine of %q: say who quarantines it", q.DeviceID)
	}
	if err := checkText("actor", q.Actor, store.MaxAlertFieldLength); err != nil {
		return fmt.Errorf("quarantine of %q: %w", q.DeviceID, err)
	}
	if err := checkText("reason", q.Reason, store.MaxAlertSummaryLength); err != nil {
		return fmt.Errorf("quarantine of %q: %w", q.DeviceID, err)
	}
	if q.CreatedAt.IsZero() {
		return fmt.Errorf("quarantine of %q: no time", q.DeviceID)
	}
	return nil
}

func queryQuarantines(ctx context.Context, q querier, query string, args ...any) ([]store.Quarantine, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query quarantines: %w", err)
	}
	defer rows.Close()
	out := []store.Quarantine{}
	for rows.Next() {
		var (
			r       store.Quarantine
			created int64
		)
		if err := rows.Scan(&r.DeviceID, &r.Reason, &r.AlertID, &r.Actor, &created); err != nil {
			return nil, fmt.Errorf("read quarantine row: %w", err)
		}
		r.CreatedAt = fromDB(created)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read quarantines: %w", err)
	}
	return out, nil
}

// SetQuarantine implements store.AlertStore.
func (s *Store) SetQuarantine(ctx context.Context, q store.Quarantine) error {
	if err := checkQuarantine(q); err != nil {
		return fmt.Errorf("set quarantine: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := getDevice(ctx, tx, q.DeviceID); err != nil {
			return fmt.Errorf("quarantine: %w", err)
		}
		if err := absent(ctx, tx, `SELECT 1 FROM quarantines WHERE device_id = $1`, q.DeviceID); err != nil {
			return fmt.Errorf("quarantine device %q: it is quarantined already: %w", q.DeviceID, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO quarantines (`+quarantineColumns+`) VALUES ($1, $2, $3, $4, $5)`,
			q.DeviceID, q.Reason, q.AlertID, q.Actor, toDB(q.CreatedAt)); err != nil {
			return insertError("quarantine device", q.DeviceID, err)
		}
		return nil
	})
}

// ClearQuarantine implements store.AlertStore.
func (s *Store) ClearQuarantine(ctx context.Context, deviceID string) (store.Quarantine, error) {
	var q store.Quarantine
	err := s.write(ctx, func(tx *sql.Tx) error {
		qs, err := queryQuarantines(ctx, tx, `SELECT `+quarantineColumns+` FROM quarantines WHERE device_id = $1`, deviceID)
		if err != nil {
			return fmt.Errorf("release device %q: %w", deviceID, err)
		}
		if len(qs) == 0 {
			return fmt.Errorf("release device %q: it is not quarantined: %w", deviceID, store.ErrNotFound)
		}
		q = qs[0]
		if _, err := tx.ExecContext(ctx, `DELETE FROM quarantines WHERE device_id = $1`, deviceID); err != nil {
			return fmt.Errorf("release device %q: %w", deviceID, err)
		}
		return nil
	})
	if err != nil {
		return store.Quarantine{}, err
	}
	return q, nil
}

// ListQuarantines implements store.AlertStore.
func (s *Store) ListQuarantines(ctx context.Context) ([]store.Quarantine, error) {
	qs, err := queryQuarantines(ctx, s.ro, `SELECT `+quarantineColumns+` FROM quarantines ORDER BY device_id`)
	if err != nil {
		return nil, fmt.Errorf("list quarantines: %w", err)
	}
	return qs, nil
}

// --- certificate expiry ---

// ExpiringCredentials implements store.AlertStore.
func (s *Store) ExpiringCredentials(ctx context.Context, f store.ExpiryFilter) ([]store.ExpiringCredential, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT c.serial, c.subject_kind, c.subject_id, c.not_before, c.not_after
FROM credentials c
WHERE c.revoked_at IS NULL AND c.not_after >= $1 AND c.not_after < $2 AND c.serial > $3
  AND NOT EXISTS (SELECT 1 FROM credentials n
                  WHERE n.subject_kind = c.subject_kind AND n.subject_id = c.subject_id
                    AND n.revoked_at IS NULL AND n.not_after > c.not_after)
  AND ((c.subject_kind = 'device' AND EXISTS (SELECT 1 FROM devices d WHERE d.id = c.subject_id AND d.state = 'active'))
    OR (c.subject_kind = 'service' AND EXISTS (SELECT 1 FROM services v WHERE v.name = c.subject_id AND v.state = 'active')))
ORDER BY c.serial LIMIT $4`, toDB(f.From), toDB(f.To), f.After, int64(pageSize(f.Limit)))
	if err != nil {
		return nil, fmt.Errorf("expiring credentials: %w", err)
	}
	defer rows.Close()
	out := []store.ExpiringCredential{}
	for rows.Next() {
		var (
			c                   store.ExpiringCredential
			kind                string
			notBefore, notAfter int64
		)
		if err := rows.Scan(&c.Serial, &kind, &c.SubjectID, &notBefore, &notAfter); err != nil {
			return nil, fmt.Errorf("read expiring credential row: %w", err)
		}
		c.SubjectKind, c.NotBefore, c.NotAfter = identity.Kind(kind), fromDB(notBefore), fromDB(notAfter)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read expiring credentials: %w", err)
	}
	return out, nil
}
