package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Times are stored as Unix microseconds: PostgreSQL keeps the same
// resolution, and the range (±292,000 years) holds any certificate date.
func toDB(t time.Time) int64 { return t.UnixMicro() }

func fromDB(v int64) time.Time { return time.UnixMicro(v).UTC() }

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return toDB(t)
}

// write runs fn in a write transaction (BEGIN IMMEDIATE).
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.rw.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin write transaction on %s: %w", s.path, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit transaction on %s: %w", s.path, err)
	}
	return nil
}

// --- devices ---

const deviceColumns = `id, model, state, state_reason, owner, created_at, updated_at`

// queryDevices runs one statement that selects devices and left-joins their
// tags, so a device and its tags are read from the same snapshot without a
// transaction. inner is a complete SELECT of deviceColumns from devices.
func queryDevices(ctx context.Context, q querier, inner string, args ...any) ([]store.Device, error) {
	rows, err := q.QueryContext(ctx, `SELECT d.id, d.model, d.state, d.state_reason, d.owner, d.created_at, d.updated_at, t.key, t.value
FROM (`+inner+`) d
LEFT JOIN device_tags t ON t.device_id = d.id
ORDER BY d.id, t.key`, args...)
	if err != nil {
		return nil, fmt.Errorf("query devices: %w", err)
	}
	defer rows.Close()
	var out []store.Device
	for rows.Next() {
		var (
			d                store.Device
			state            string
			created, updated int64
			tagKey, tagValue sql.NullString
		)
		if err := rows.Scan(&d.ID, &d.Model, &state, &d.StateReason, &d.Owner, &created, &updated, &tagKey, &tagValue); err != nil {
			return nil, fmt.Errorf("read device row: %w", err)
		}
		if n := len(out); n == 0 || out[n-1].ID != d.ID {
			d.State = store.DeviceState(state)
			d.CreatedAt, d.UpdatedAt = fromDB(created), fromDB(updated)
			d.Tags = map[string]string{}
			out = append(out, d)
		}
		if tagKey.Valid {
			out[len(out)-1].Tags[tagKey.String] = tagValue.String
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read devices: %w", err)
	}
	return out, nil
}

func getDevice(ctx context.Context, q querier, id string) (store.Device, error) {
	ds, err := queryDevices(ctx, q, `SELECT `+deviceColumns+` FROM devices WHERE id = $1`, id)
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	if len(ds) == 0 {
		return store.Device{}, fmt.Errorf("device %q: %w", id, store.ErrNotFound)
	}
	return ds[0], nil
}

// CreateDevice implements store.Store.
func (s *Store) CreateDevice(ctx context.Context, d store.Device, c store.Credential) error {
	if d.ID == "" {
		return errors.New("create device: empty device ID")
	}
	if err := checkNewDevice("create device", &d, c); err != nil {
		return err
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		return insertDevice(ctx, tx, "create device", d, c)
	})
}

// checkNewDevice catches programming errors in a device about to be stored
// with its first credential, and defaults UpdatedAt to CreatedAt. what
// starts every error ("create device", "enroll device").
func checkNewDevice(what string, d *store.Device, c store.Credential) error {
	if d.State != store.StateActive && d.State != store.StateDisabled {
		return fmt.Errorf("%s %q: state %q: a device is created active or disabled", what, d.ID, d.State)
	}
	if c.SubjectKind != identity.KindDevice || c.SubjectID != d.ID {
		return fmt.Errorf("%s %q: credential names %s:%s, not this device", what, d.ID, c.SubjectKind, c.SubjectID)
	}
	if err := checkCredential(c); err != nil {
		return fmt.Errorf("%s %q: %w", what, d.ID, err)
	}
	if d.UpdatedAt.IsZero() {
		d.UpdatedAt = d.CreatedAt
	}
	return nil
}

// insertDevice stores a device checked by checkNewDevice, its tags and its
// first credential inside tx: CreateDevice and Enroll share it so that an
// enrolled device is stored exactly as a created one.
func insertDevice(ctx context.Context, tx *sql.Tx, what string, d store.Device, c store.Credential) error {
	if err := absent(ctx, tx, `SELECT 1 FROM devices WHERE id = $1`, d.ID); err != nil {
		return fmt.Errorf("%s %q: device %w", what, d.ID, err)
	}
	if err := absent(ctx, tx, `SELECT 1 FROM credentials WHERE serial = $1`, c.Serial); err != nil {
		return fmt.Errorf("%s %q: credential serial %s %w", what, d.ID, c.Serial, err)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO devices (`+deviceColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		d.ID, d.Model, string(d.State), d.StateReason, d.Owner, toDB(d.CreatedAt), toDB(d.UpdatedAt))
	if err != nil {
		return insertError(what, d.ID, err)
	}
	if err := insertTags(ctx, tx, d.ID, d.Tags); err != nil {
		return err
	}
	return insertCredential(ctx, tx, c)
}

// absent returns ErrConflict if query finds a row. The unique constraints
// remain the real guard; this only makes the error say which key clashed.
func absent(ctx context.Context, tx *sql.Tx, query string, args ...any) error {
	var one int
	switch err := tx.QueryRowContext(ctx, query, args...).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("check existence: %w", err)
	}
	return store.ErrConflict
}

func insertError(what, id string, err error) error {
	if isUnique(err) {
		return fmt.Errorf("%s %q: %w", what, id, store.ErrConflict)
	}
	return fmt.Errorf("%s %q: %w", what, id, err)
}

func insertTags(ctx context.Context, tx *sql.Tx, id string, tags map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		if _, err := tx.ExecContext(ctx, `INSERT INTO device_tags (device_id, key, value) VALUES ($1, $2, $3)`, id, k, tags[k]); err != nil {
			return fmt.Errorf("store tag %q of device %q: %w", k, id, err)
		}
	}
	return nil
}

// GetDevice implements store.Store.
func (s *Store) GetDevice(ctx context.Context, id string) (store.Device, error) {
	return getDevice(ctx, s.ro, id)
}

// ListDevices implements store.Store.
func (s *Store) ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, fmt.Errorf("list devices: unknown state %q", f.State)
	}
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.After != "" {
		where = append(where, "id > "+arg(f.After))
	}
	if f.State != "" {
		where = append(where, "state = "+arg(string(f.State)))
	}
	if f.Model != "" {
		where = append(where, "model = "+arg(f.Model))
	}
	if f.Owner != "" {
		where = append(where, "owner = "+arg(f.Owner))
	}
	for _, k := range slices.Sorted(maps.Keys(f.Tags)) {
		where = append(where, "EXISTS (SELECT 1 FROM device_tags ft WHERE ft.device_id = devices.id AND ft.key = "+
			arg(k)+" AND ft.value = "+arg(f.Tags[k])+")")
	}
	inner := `SELECT ` + deviceColumns + ` FROM devices`
	if len(where) > 0 {
		inner += " WHERE " + strings.Join(where, " AND ")
	}
	inner += " ORDER BY id LIMIT " + arg(int64(f.PageSize()))
	ds, err := queryDevices(ctx, s.ro, inner, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return ds, nil
}

// SetDeviceState implements store.Store.
func (s *Store) SetDeviceState(ctx context.Context, id string, st store.DeviceState, reason string, at time.Time) (store.Device, error) {
	switch st {
	case store.StateActive, store.StateDisabled:
	case store.StateRevoked:
		return store.Device{}, fmt.Errorf("set state of device %q: revocation must go through RevokeDevice, which also revokes credentials", id)
	default:
		return store.Device{}, fmt.Errorf("set state of device %q: unknown state %q", id, st)
	}
	var d store.Device
	err := s.write(ctx, func(tx *sql.Tx) error {
		cur, err := subjectState(ctx, tx, identity.KindDevice, id)
		if err != nil {
			return err
		}
		if cur == store.StateRevoked {
			return fmt.Errorf("device %q: %w: a revoked device stays revoked", id, store.ErrRevoked)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4`,
			string(st), reason, toDB(at), id); err != nil {
			return fmt.Errorf("update device %q: %w", id, err)
		}
		d, err = getDevice(ctx, tx, id)
		return err
	})
	return d, err
}

// RevokeDevice implements store.Store.
func (s *Store) RevokeDevice(ctx context.Context, id, reason string, at time.Time) (store.Device, []store.Credential, error) {
	var (
		d     store.Device
		creds []store.Credential
	)
	err := s.write(ctx, func(tx *sql.Tx) error {
		cur, err := subjectState(ctx, tx, identity.KindDevice, id)
		if err != nil {
			return err
		}
		if cur != store.StateRevoked {
			if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4`,
				string(store.StateRevoked), reason, toDB(at), id); err != nil {
				return fmt.Errorf("revoke device %q: %w", id, err)
			}
		}
		if creds, err = revokeCredentials(ctx, tx, identity.KindDevice, id, reason, at); err != nil {
			return err
		}
		// A revoked device's envelope secrets are never used again.
		if err := retireEnvelopeKeys(ctx, tx, id, at, store.EnvelopeActive, store.EnvelopePending); err != nil {
			return fmt.Errorf("revoke device %q: %w", id, err)
		}
		d, err = getDevice(ctx, tx, id)
		return err
	})
	if err != nil {
		return store.Device{}, nil, err
	}
	return d, creds, nil
}

// SetDeviceTags implements store.Store.
func (s *Store) SetDeviceTags(ctx context.Context, id string, tags map[string]string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := subjectState(ctx, tx, identity.KindDevice, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM device_tags WHERE device_id = $1`, id); err != nil {
			return fmt.Errorf("clear tags of device %q: %w", id, err)
		}
		return insertTags(ctx, tx, id, tags)
	})
}

// subjectState returns the state of a device or service, or ErrNotFound.
func subjectState(ctx context.Context, q querier, kind identity.Kind, id string) (store.DeviceState, error) {
	var query string
	switch kind {
	case identity.KindDevice:
		query = `SELECT state FROM devices WHERE id = $1`
	case identity.KindService:
		query = `SELECT state FROM services WHERE name = $1`
	default:
		return "", fmt.Errorf("unknown subject kind %q", kind)
	}
	var st string
	switch err := q.QueryRowContext(ctx, query, id).Scan(&st); {
	case errors.Is(err, sql.ErrNoRows):
		return "", fmt.Errorf("%s %q: %w", kind, id, store.ErrNotFound)
	case err != nil:
		return "", fmt.Errorf("read state of %s %q: %w", kind, id, err)
	}
	return store.DeviceState(st), nil
}

// --- credentials ---

const credentialColumns = `serial, subject_kind, subject_id, fingerprint, not_before, not_after, csr, certificate, created_at, revoked_at, revocation_reason`

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

// checkCredential catches programming errors before they reach the table.
func checkCredential(c store.Credential) error {
	switch {
	case !isLowerHex(c.Serial):
		return fmt.Errorf("credential serial %q is not lowercase hex", c.Serial)
	case c.SubjectKind != identity.KindDevice && c.SubjectKind != identity.KindService:
		return fmt.Errorf("credential %s: unknown subject kind %q", c.Serial, c.SubjectKind)
	case c.SubjectID == "":
		return fmt.Errorf("credential %s: empty subject ID", c.Serial)
	case !isLowerHex(c.Fingerprint):
		return fmt.Errorf("credential %s: fingerprint %q is not lowercase hex", c.Serial, c.Fingerprint)
	case len(c.Certificate) == 0:
		return fmt.Errorf("credential %s: no certificate", c.Serial)
	}
	return nil
}

func insertCredential(ctx context.Context, tx *sql.Tx, c store.Credential) error {
	csr := c.CSR
	if csr == nil {
		csr = []byte{}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO credentials (`+credentialColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		c.Serial, string(c.SubjectKind), c.SubjectID, c.Fingerprint, toDB(c.NotBefore), toDB(c.NotAfter),
		csr, c.Certificate, toDB(c.CreatedAt), nullTime(c.RevokedAt), c.RevocationReason)
	if err != nil {
		return insertError("store credential", c.Serial, err)
	}
	return nil
}

func scanCredentials(rows *sql.Rows) ([]store.Credential, error) {
	defer rows.Close()
	var out []store.Credential
	for rows.Next() {
		var (
			c                          store.Credential
			kind                       string
			notBefore, notAfter, added int64
			revoked                    sql.NullInt64
		)
		if err := rows.Scan(&c.Serial, &kind, &c.SubjectID, &c.Fingerprint, &notBefore, &notAfter,
			&c.CSR, &c.Certificate, &added, &revoked, &c.RevocationReason); err != nil {
			return nil, fmt.Errorf("read credential row: %w", err)
		}
		c.SubjectKind = identity.Kind(kind)
		c.NotBefore, c.NotAfter, c.CreatedAt = fromDB(notBefore), fromDB(notAfter), fromDB(added)
		if revoked.Valid {
			c.RevokedAt = fromDB(revoked.Int64)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	return out, nil
}

func queryCredentials(ctx context.Context, q querier, query string, args ...any) ([]store.Credential, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query credentials: %w", err)
	}
	return scanCredentials(rows)
}

// AddCredential implements store.Store.
func (s *Store) AddCredential(ctx context.Context, c store.Credential) error {
	if err := checkCredential(c); err != nil {
		return fmt.Errorf("add credential: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		st, err := subjectState(ctx, tx, c.SubjectKind, c.SubjectID)
		if err != nil {
			return fmt.Errorf("add credential %s: %w", c.Serial, err)
		}
		if st == store.StateRevoked {
			return fmt.Errorf("add credential %s: %s %q is %w", c.Serial, c.SubjectKind, c.SubjectID, store.ErrRevoked)
		}
		return insertCredential(ctx, tx, c)
	})
}

// CredentialBySerial implements store.Store.
func (s *Store) CredentialBySerial(ctx context.Context, serial string) (store.Credential, error) {
	serial = strings.ToLower(serial)
	cs, err := queryCredentials(ctx, s.ro, `SELECT `+credentialColumns+` FROM credentials WHERE serial = $1`, serial)
	if err != nil {
		return store.Credential{}, fmt.Errorf("credential %s: %w", serial, err)
	}
	if len(cs) == 0 {
		return store.Credential{}, fmt.Errorf("credential %s: %w", serial, store.ErrNotFound)
	}
	return cs[0], nil
}

// admissionQuery reads a credential, without its blobs, and its subject's
// state in one statement: the lookup behind every MQTT connection, which
// took two (the full credential, then the device with its tags) and 8% of
// the broker's CPU in a reconnect storm (docs/performance.md).
const admissionQuery = `SELECT c.serial, c.subject_kind, c.subject_id, c.fingerprint, c.not_before, c.not_after,
c.created_at, c.revoked_at, c.revocation_reason,
COALESCE(d.state, s.state, ''), COALESCE(d.state_reason, s.state_reason, ''), COALESCE(s.role, '')
FROM credentials c
LEFT JOIN devices d ON c.subject_kind = 'device' AND d.id = c.subject_id
LEFT JOIN services s ON c.subject_kind = 'service' AND s.name = c.subject_id
WHERE c.serial = $1`

// Admission implements store.Store.
func (s *Store) Admission(ctx context.Context, serial string) (store.Admission, error) {
	serial = strings.ToLower(serial)
	var (
		a                          store.Admission
		c                          = &a.Credential
		kind, state                string
		notBefore, notAfter, added int64
		revoked                    sql.NullInt64
	)
	err := s.ro.QueryRowContext(ctx, admissionQuery, serial).Scan(&c.Serial, &kind, &c.SubjectID, &c.Fingerprint,
		&notBefore, &notAfter, &added, &revoked, &c.RevocationReason, &state, &a.SubjectStateReason, &a.Role)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Admission{}, fmt.Errorf("credential %s: %w", serial, store.ErrNotFound)
	}
	if err != nil {
		return store.Admission{}, fmt.Errorf("credential %s: %w", serial, err)
	}
	c.SubjectKind = identity.Kind(kind)
	c.NotBefore, c.NotAfter, c.CreatedAt = fromDB(notBefore), fromDB(notAfter), fromDB(added)
	if revoked.Valid {
		c.RevokedAt = fromDB(revoked.Int64)
	}
	a.SubjectState = store.DeviceState(state)
	return a, nil
}

// Credentials implements store.Store.
func (s *Store) Credentials(ctx context.Context, kind identity.Kind, id string) ([]store.Credential, error) {
	cs, err := queryCredentials(ctx, s.ro, `SELECT `+credentialColumns+` FROM credentials
WHERE subject_kind = $1 AND subject_id = $2
ORDER BY created_at DESC, not_before DESC, serial DESC`, string(kind), id)
	if err != nil {
		return nil, fmt.Errorf("credentials of %s %q: %w", kind, id, err)
	}
	return cs, nil
}

// RevokedCredentials implements store.Store.
func (s *Store) RevokedCredentials(ctx context.Context) ([]store.Credential, error) {
	cs, err := queryCredentials(ctx, s.ro, `SELECT `+credentialColumns+` FROM credentials
WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial`)
	if err != nil {
		return nil, fmt.Errorf("revoked credentials: %w", err)
	}
	return cs, nil
}

// revokeCredentials revokes every unrevoked credential of a subject and
// returns them as they now are.
func revokeCredentials(ctx context.Context, tx *sql.Tx, kind identity.Kind, id, reason string, at time.Time) ([]store.Credential, error) {
	cs, err := queryCredentials(ctx, tx, `SELECT `+credentialColumns+` FROM credentials
WHERE subject_kind = $1 AND subject_id = $2 AND revoked_at IS NULL
ORDER BY created_at DESC, not_before DESC, serial DESC`, string(kind), id)
	if err != nil {
		return nil, fmt.Errorf("revoke credentials of %s %q: %w", kind, id, err)
	}
	if len(cs) == 0 {
		return nil, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE credentials SET revoked_at = $1, revocation_reason = $2
WHERE subject_kind = $3 AND subject_id = $4 AND revoked_at IS NULL`, toDB(at), reason, string(kind), id); err != nil {
		return nil, fmt.Errorf("revoke credentials of %s %q: %w", kind, id, err)
	}
	for i := range cs {
		cs[i].RevokedAt = fromDB(toDB(at))
		cs[i].RevocationReason = reason
	}
	return cs, nil
}

// --- services ---

const serviceColumns = `name, role, state, state_reason, created_at, updated_at`

func queryServices(ctx context.Context, q querier, query string, args ...any) ([]store.Service, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query services: %w", err)
	}
	defer rows.Close()
	var out []store.Service
	for rows.Next() {
		var (
			sv               store.Service
			state            string
			created, updated int64
		)
		if err := rows.Scan(&sv.Name, &sv.Role, &state, &sv.StateReason, &created, &updated); err != nil {
			return nil, fmt.Errorf("read service row: %w", err)
		}
		sv.State = store.DeviceState(state)
		sv.CreatedAt, sv.UpdatedAt = fromDB(created), fromDB(updated)
		out = append(out, sv)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	return out, nil
}

func getService(ctx context.Context, q querier, name string) (store.Service, error) {
	ss, err := queryServices(ctx, q, `SELECT `+serviceColumns+` FROM services WHERE name = $1`, name)
	if err != nil {
		return store.Service{}, fmt.Errorf("get service %q: %w", name, err)
	}
	if len(ss) == 0 {
		return store.Service{}, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
	}
	return ss[0], nil
}

// CreateService implements store.Store.
func (s *Store) CreateService(ctx context.Context, sv store.Service, c store.Credential) error {
	if sv.Name == "" {
		return errors.New("create service: empty service name")
	}
	if sv.State != store.StateActive && sv.State != store.StateDisabled {
		return fmt.Errorf("create service %q: state %q: a service is created active or disabled", sv.Name, sv.State)
	}
	if c.SubjectKind != identity.KindService || c.SubjectID != sv.Name {
		return fmt.Errorf("create service %q: credential names %s:%s, not this service", sv.Name, c.SubjectKind, c.SubjectID)
	}
	if err := checkCredential(c); err != nil {
		return fmt.Errorf("create service %q: %w", sv.Name, err)
	}
	if sv.UpdatedAt.IsZero() {
		sv.UpdatedAt = sv.CreatedAt
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM services WHERE name = $1`, sv.Name); err != nil {
			return fmt.Errorf("create service %q: service %w", sv.Name, err)
		}
		if err := absent(ctx, tx, `SELECT 1 FROM credentials WHERE serial = $1`, c.Serial); err != nil {
			return fmt.Errorf("create service %q: credential serial %s %w", sv.Name, c.Serial, err)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO services (`+serviceColumns+`) VALUES ($1, $2, $3, $4, $5, $6)`,
			sv.Name, sv.Role, string(sv.State), sv.StateReason, toDB(sv.CreatedAt), toDB(sv.UpdatedAt))
		if err != nil {
			return insertError("create service", sv.Name, err)
		}
		return insertCredential(ctx, tx, c)
	})
}

// GetService implements store.Store.
func (s *Store) GetService(ctx context.Context, name string) (store.Service, error) {
	return getService(ctx, s.ro, name)
}

// ListServices implements store.Store.
func (s *Store) ListServices(ctx context.Context) ([]store.Service, error) {
	ss, err := queryServices(ctx, s.ro, `SELECT `+serviceColumns+` FROM services ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return ss, nil
}

// RevokeService implements store.Store.
func (s *Store) RevokeService(ctx context.Context, name, reason string, at time.Time) (store.Service, []store.Credential, error) {
	var (
		sv    store.Service
		creds []store.Credential
	)
	err := s.write(ctx, func(tx *sql.Tx) error {
		cur, err := subjectState(ctx, tx, identity.KindService, name)
		if err != nil {
			return err
		}
		if cur != store.StateRevoked {
			if _, err := tx.ExecContext(ctx, `UPDATE services SET state = $1, state_reason = $2, updated_at = $3 WHERE name = $4`,
				string(store.StateRevoked), reason, toDB(at), name); err != nil {
				return fmt.Errorf("revoke service %q: %w", name, err)
			}
		}
		if creds, err = revokeCredentials(ctx, tx, identity.KindService, name, reason, at); err != nil {
			return err
		}
		sv, err = getService(ctx, tx, name)
		return err
	})
	if err != nil {
		return store.Service{}, nil, err
	}
	return sv, creds, nil
}
