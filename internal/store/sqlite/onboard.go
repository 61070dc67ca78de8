package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

var _ store.OnboardStore = (*Store)(nil)

// apiTokenRoles are the roles the api_tokens table accepts; store names no
// constants for them, so the list here and the table's CHECK must agree.
var apiTokenRoles = []string{"admin", "operator", "viewer", "app"}

// rotationDeviceStates are the per-device rotation states, in order.
var rotationDeviceStates = []string{
	store.RotationDevicePending, store.RotationDeviceIssued, store.RotationDeviceDelivered,
	store.RotationDeviceSwitched, store.RotationDeviceFailed,
}

// rotationDeviceNeedsSerial reports whether a device in state s must name
// its re-issued credential: every state past pending but failed.
func rotationDeviceNeedsSerial(s string) bool {
	return s != store.RotationDevicePending && s != store.RotationDeviceFailed
}

// nullString stores "" as NULL, for optional references.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// timeFromNull is fromDB for a nullable column; NULL is the zero time.
func timeFromNull(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromDB(v.Int64)
}

// --- enrollments ---

const enrollmentColumns = `device_id, method, claim, model, tags, secret, created_at, used_at, serial, recovery`

// checkEnrollment catches programming errors before they reach the table.
// Errors never include the sealed secret.
func checkEnrollment(e store.Enrollment) error {
	if err := identity.ValidateDeviceID(e.DeviceID); err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	switch e.Method {
	case store.EnrollSecret:
		if len(e.Secret) == 0 || e.Claim != "" {
			return fmt.Errorf("enrollment of %q: a %s enrollment needs a sealed secret and no claim certificate", e.DeviceID, e.Method)
		}
	case store.EnrollClaim:
		if e.Claim == "" || len(e.Secret) != 0 {
			return fmt.Errorf("enrollment of %q: a %s enrollment needs a claim certificate name and no secret", e.DeviceID, e.Method)
		}
	default:
		return fmt.Errorf("enrollment of %q: unknown method %q (want %q or %q)", e.DeviceID, e.Method, store.EnrollSecret, store.EnrollClaim)
	}
	if e.Recovery && e.Method != store.EnrollSecret {
		return fmt.Errorf("enrollment of %q: a recovery enrollment is a %s enrollment, not %s", e.DeviceID, store.EnrollSecret, e.Method)
	}
	if e.Used() || e.Serial != "" {
		return fmt.Errorf("enrollment of %q: an enrollment is added unused (no use time, no serial)", e.DeviceID)
	}
	return nil
}

// enrollmentRow receives one enrollments row; decode turns it into an
// Enrollment.
type enrollmentRow struct {
	e        store.Enrollment
	claim    sql.NullString
	tags     string
	created  int64
	used     sql.NullInt64
	recovery int64
}

func (x *enrollmentRow) dest() []any {
	return []any{&x.e.DeviceID, &x.e.Method, &x.claim, &x.e.Model, &x.tags, &x.e.Secret, &x.created, &x.used, &x.e.Serial, &x.recovery}
}

func (x *enrollmentRow) decode() (store.Enrollment, error) {
	e := x.e
	e.Claim = x.claim.String
	if err := json.Unmarshal([]byte(x.tags), &e.Tags); err != nil {
		return store.Enrollment{}, fmt.Errorf("enrollment of %q: stored tags: %w", e.DeviceID, err)
	}
	if e.Tags == nil {
		e.Tags = map[string]string{}
	}
	if len(e.Secret) == 0 {
		e.Secret = nil
	}
	e.Created = fromDB(x.created)
	e.UsedAt = timeFromNull(x.used)
	e.Recovery = x.recovery != 0
	return e, nil
}

func queryEnrollments(ctx context.Context, q querier, query string, args ...any) ([]store.Enrollment, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query enrollments: %w", err)
	}
	defer rows.Close()
	out := []store.Enrollment{}
	for rows.Next() {
		var x enrollmentRow
		if err := rows.Scan(x.dest()...); err != nil {
			return nil, fmt.Errorf("read enrollment row: %w", err)
		}
		e, err := x.decode()
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read enrollments: %w", err)
	}
	return out, nil
}

func getEnrollment(ctx context.Context, q querier, deviceID string) (store.Enrollment, error) {
	es, err := queryEnrollments(ctx, q, `SELECT `+enrollmentColumns+` FROM enrollments WHERE device_id = $1`, deviceID)
	if err != nil {
		return store.Enrollment{}, fmt.Errorf("get enrollment of %q: %w", deviceID, err)
	}
	if len(es) == 0 {
		return store.Enrollment{}, fmt.Errorf("enrollment of %q: %w", deviceID, store.ErrNotFound)
	}
	return es[0], nil
}

// AddEnrollments implements store.OnboardStore. Besides the contract's
// checks it refuses an ID that names a service (ErrConflict: devices and
// services share the MQTT client-ID namespace, so the device could never
// enroll), an enrollment on the allow-list of a revoked claim certificate
// (ErrRevoked) and a recovery enrollment that is not a secret one. A
// factory batch can be large, so the statements are prepared once.
func (s *Store) AddEnrollments(ctx context.Context, es []store.Enrollment) error {
	if len(es) == 0 {
		return nil
	}
	tags := make([]string, len(es))
	seen := make(map[string]bool, len(es))
	for i, e := range es {
		if err := checkEnrollment(e); err != nil {
			return fmt.Errorf("add enrollments: %w", err)
		}
		if seen[e.DeviceID] {
			return fmt.Errorf("add enrollments: device %q is listed twice", e.DeviceID)
		}
		seen[e.DeviceID] = true
		t := e.Tags
		if t == nil {
			t = map[string]string{}
		}
		b, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("add enrollments: encode tags of %q: %w", e.DeviceID, err)
		}
		tags[i] = string(b)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		taken, err := tx.PrepareContext(ctx, `SELECT
    EXISTS (SELECT 1 FROM enrollments WHERE device_id = $1),
    (SELECT state FROM devices WHERE id = $1),
    EXISTS (SELECT 1 FROM services WHERE name = $1)`)
		if err != nil {
			return fmt.Errorf("add enrollments: %w", err)
		}
		defer taken.Close()
		// A recovery enrollment replaces whatever enrollment the device has:
		// the used one it first enrolled with, or a recovery it never used.
		replace, err := tx.PrepareContext(ctx, `DELETE FROM enrollments WHERE device_id = $1`)
		if err != nil {
			return fmt.Errorf("add enrollments: %w", err)
		}
		defer replace.Close()
		insert, err := tx.PrepareContext(ctx, `INSERT INTO enrollments (`+enrollmentColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, '', $8)`)
		if err != nil {
			return fmt.Errorf("add enrollments: %w", err)
		}
		defer insert.Close()
		claims := map[string]bool{} // claim certificates checked already
		for i, e := range es {
			what := fmt.Sprintf("add enrollment of %q", e.DeviceID)
			var (
				enrolled, service bool
				state             sql.NullString
			)
			if err := taken.QueryRowContext(ctx, e.DeviceID).Scan(&enrolled, &state, &service); err != nil {
				return fmt.Errorf("%s: check existence: %w", what, err)
			}
			if e.Recovery {
				switch {
				case !state.Valid:
					return fmt.Errorf("%s: device %q: %w; recovery is for a registered device (preregister it without recovery to enroll a new device)",
						what, e.DeviceID, store.ErrNotFound)
				case store.DeviceState(state.String) == store.StateRevoked:
					return fmt.Errorf("%s: device %q is %w, for good: a revoked device cannot recover (register it under a new ID)", what, e.DeviceID, store.ErrRevoked)
				case service:
					return fmt.Errorf("%s: a service with the name %w (devices and services share the MQTT client-ID namespace)", what, store.ErrConflict)
				}
				if _, err := replace.ExecContext(ctx, e.DeviceID); err != nil {
					return fmt.Errorf("%s: replace the earlier enrollment: %w", what, err)
				}
			} else {
				switch {
				case enrolled:
					return fmt.Errorf("%s: an enrollment for the ID %w", what, store.ErrConflict)
				case state.Valid:
					return fmt.Errorf("%s: a device with the ID %w", what, store.ErrConflict)
				case service:
					return fmt.Errorf("%s: a service with the name %w (devices and services share the MQTT client-ID namespace)", what, store.ErrConflict)
				}
			}
			if e.Method == store.EnrollClaim && !claims[e.Claim] {
				c, err := getClaimCert(ctx, tx, e.Claim)
				if err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
				if c.Revoked() {
					return fmt.Errorf("%s: claim certificate %q is %w", what, c.Name, store.ErrRevoked)
				}
				claims[e.Claim] = true
			}
			var secret any
			if e.Method == store.EnrollSecret {
				secret = e.Secret
			}
			recovery := 0
			if e.Recovery {
				recovery = 1
			}
			if _, err := insert.ExecContext(ctx, e.DeviceID, e.Method, nullString(e.Claim), e.Model, tags[i], secret,
				toDB(e.Created), recovery); err != nil {
				return insertError("add enrollment of", e.DeviceID, err)
			}
		}
		return nil
	})
}

// GetEnrollment implements store.OnboardStore.
func (s *Store) GetEnrollment(ctx context.Context, deviceID string) (store.Enrollment, error) {
	return getEnrollment(ctx, s.ro, deviceID)
}

// ListEnrollments implements store.OnboardStore.
func (s *Store) ListEnrollments(ctx context.Context, f store.EnrollmentFilter) ([]store.Enrollment, error) {
	unused := 0
	if f.Unused {
		unused = 1
	}
	// Fixed text: the filter reaches the database only as arguments.
	es, err := queryEnrollments(ctx, s.ro, `SELECT `+enrollmentColumns+` FROM enrollments
WHERE device_id > $1 AND ($2 = '' OR claim = $2) AND ($3 = 0 OR used_at IS NULL)
ORDER BY device_id LIMIT $4`, f.After, f.Claim, unused, int64(pageSize(f.Limit)))
	if err != nil {
		return nil, fmt.Errorf("list enrollments: %w", err)
	}
	return es, nil
}

// DeleteEnrollment implements store.OnboardStore.
func (s *Store) DeleteEnrollment(ctx context.Context, deviceID string) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		e, err := getEnrollment(ctx, tx, deviceID)
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		if e.Used() {
			return fmt.Errorf("delete enrollment of %q: the device enrolled with it at %s; it stays as history: %w",
				deviceID, e.UsedAt.Format(time.RFC3339), store.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM enrollments WHERE device_id = $1 AND used_at IS NULL`, deviceID); err != nil {
			return fmt.Errorf("delete enrollment of %q: %w", deviceID, err)
		}
		return nil
	})
}

// Enroll implements store.OnboardStore. Besides the contract's checks it
// refuses an ID that names a service (ErrConflict), as AddEnrollments does,
// and an enrollment whose claim certificate was revoked (ErrRevoked). A
// zero d.CreatedAt defaults to at.
func (s *Store) Enroll(ctx context.Context, d store.Device, c store.Credential, at time.Time) (store.Device, error) {
	const what = "enroll device"
	if err := identity.ValidateDeviceID(d.ID); err != nil {
		return store.Device{}, fmt.Errorf("%s: %w", what, err)
	}
	if at.IsZero() {
		return store.Device{}, fmt.Errorf("%s %q: no enrollment time", what, d.ID)
	}
	if d.CreatedAt.IsZero() {
		d.CreatedAt = at
	}
	if err := checkNewDevice(what, &d, c); err != nil {
		return store.Device{}, err
	}
	var out store.Device
	err := s.write(ctx, func(tx *sql.Tx) error {
		e, err := getEnrollment(ctx, tx, d.ID)
		if err != nil {
			return fmt.Errorf("%s %q: %w", what, d.ID, err)
		}
		if e.Used() {
			return fmt.Errorf("%s %q: the enrollment was used at %s (serial %s): %w",
				what, d.ID, e.UsedAt.Format(time.RFC3339), e.Serial, store.ErrConflict)
		}
		if e.Recovery {
			return fmt.Errorf("%s %q: the enrollment is a recovery enrollment for a registered device (use Recover): %w",
				what, d.ID, store.ErrConflict)
		}
		if e.Method == store.EnrollClaim {
			cc, err := getClaimCert(ctx, tx, e.Claim)
			if err != nil {
				return fmt.Errorf("%s %q: %w", what, d.ID, err)
			}
			if cc.Revoked() {
				return fmt.Errorf("%s %q: claim certificate %q is %w", what, d.ID, cc.Name, store.ErrRevoked)
			}
		}
		if err := absent(ctx, tx, `SELECT 1 FROM services WHERE name = $1`, d.ID); err != nil {
			return fmt.Errorf("%s %q: a service with the name %w (devices and services share the MQTT client-ID namespace)", what, d.ID, err)
		}
		d.Model, d.Tags = e.Model, e.Tags
		if err := insertDevice(ctx, tx, what, d, c); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE enrollments SET used_at = $1, serial = $2 WHERE device_id = $3 AND used_at IS NULL`,
			toDB(at), c.Serial, d.ID)
		if err != nil {
			return fmt.Errorf("%s %q: mark the enrollment used: %w", what, d.ID, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("%s %q: mark the enrollment used: %w", what, d.ID, err)
		} else if n != 1 {
			return fmt.Errorf("%s %q: the enrollment is no longer unused: %w", what, d.ID, store.ErrConflict)
		}
		out, err = getDevice(ctx, tx, d.ID)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return out, nil
}

// Recover implements store.OnboardStore. Besides the contract's checks it
// refuses (not with a store error) a credential that is not for the device
// or is revoked already.
func (s *Store) Recover(ctx context.Context, id string, c store.Credential, at time.Time) (store.Device, error) {
	const what = "recover device"
	if err := identity.ValidateDeviceID(id); err != nil {
		return store.Device{}, fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case at.IsZero():
		return store.Device{}, fmt.Errorf("%s %q: no recovery time", what, id)
	case c.SubjectKind != identity.KindDevice || c.SubjectID != id:
		return store.Device{}, fmt.Errorf("%s %q: credential names %s:%s, not this device", what, id, c.SubjectKind, c.SubjectID)
	case c.Revoked():
		return store.Device{}, fmt.Errorf("%s %q: credential %s is revoked already", what, id, c.Serial)
	}
	if err := checkCredential(c); err != nil {
		return store.Device{}, fmt.Errorf("%s %q: %w", what, id, err)
	}
	var out store.Device
	err := s.write(ctx, func(tx *sql.Tx) error {
		e, err := getEnrollment(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("%s %q: %w", what, id, err)
		}
		switch {
		case !e.Recovery:
			return fmt.Errorf("%s %q: the enrollment is a first enrollment, not a recovery enrollment: %w", what, id, store.ErrConflict)
		case e.Used():
			return fmt.Errorf("%s %q: the recovery enrollment was used at %s (serial %s): %w",
				what, id, e.UsedAt.Format(time.RFC3339), e.Serial, store.ErrConflict)
		}
		d, err := getDevice(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		switch d.State {
		case store.StateActive:
		case store.StateDisabled:
			return fmt.Errorf("%s %q: the device is disabled; enable it first: %w", what, id, store.ErrConflict)
		default:
			return fmt.Errorf("%s %q: the device is %w", what, id, store.ErrRevoked)
		}
		if err := absent(ctx, tx, `SELECT 1 FROM credentials WHERE serial = $1`, c.Serial); err != nil {
			return fmt.Errorf("%s %q: credential serial %s %w", what, id, c.Serial, err)
		}
		// Revoke first, so that the new credential is the only one left.
		if _, err := revokeCredentials(ctx, tx, identity.KindDevice, id, store.RecoveryRevocationReason, at); err != nil {
			return fmt.Errorf("%s %q: %w", what, id, err)
		}
		if err := insertCredential(ctx, tx, c); err != nil {
			return fmt.Errorf("%s %q: %w", what, id, err)
		}
		res, err := tx.ExecContext(ctx, `UPDATE enrollments SET used_at = $1, serial = $2
WHERE device_id = $3 AND used_at IS NULL AND recovery = 1`, toDB(at), c.Serial, id)
		if err != nil {
			return fmt.Errorf("%s %q: mark the enrollment used: %w", what, id, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("%s %q: mark the enrollment used: %w", what, id, err)
		} else if n != 1 {
			return fmt.Errorf("%s %q: the recovery enrollment is no longer unused: %w", what, id, store.ErrConflict)
		}
		out, err = getDevice(ctx, tx, id)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return out, nil
}

// --- claim certificates ---

const claimCertColumns = `name, serial, fingerprint, certificate, not_after, created_at, revoked_at, reason`

// checkClaimCert catches programming errors before they reach the table.
func checkClaimCert(c store.ClaimCert) error {
	if err := identity.ValidateClaimName(c.Name); err != nil {
		return fmt.Errorf("claim certificate: %w", err)
	}
	switch {
	case !isLowerHex(c.Serial):
		return fmt.Errorf("claim certificate %q: serial %q is not lowercase hex", c.Name, c.Serial)
	case !isDigest(c.Fingerprint):
		return fmt.Errorf("claim certificate %q: fingerprint %q is not 64 lowercase hex digits", c.Name, c.Fingerprint)
	case len(c.Certificate) == 0:
		return fmt.Errorf("claim certificate %q: no certificate", c.Name)
	case c.Revoked():
		return fmt.Errorf("claim certificate %q: a claim certificate is created unrevoked; revoke it with RevokeClaimCert", c.Name)
	}
	if sum := sha256.Sum256(c.Certificate); hex.EncodeToString(sum[:]) != c.Fingerprint {
		return fmt.Errorf("claim certificate %q: the fingerprint is not the SHA-256 of the certificate", c.Name)
	}
	return nil
}

func queryClaimCerts(ctx context.Context, q querier, query string, args ...any) ([]store.ClaimCert, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query claim certificates: %w", err)
	}
	defer rows.Close()
	out := []store.ClaimCert{}
	for rows.Next() {
		var (
			c                 store.ClaimCert
			notAfter, created int64
			revoked           sql.NullInt64
		)
		if err := rows.Scan(&c.Name, &c.Serial, &c.Fingerprint, &c.Certificate, &notAfter, &created, &revoked, &c.Reason); err != nil {
			return nil, fmt.Errorf("read claim certificate row: %w", err)
		}
		c.NotAfter, c.CreatedAt, c.RevokedAt = fromDB(notAfter), fromDB(created), timeFromNull(revoked)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read claim certificates: %w", err)
	}
	return out, nil
}

func getClaimCert(ctx context.Context, q querier, name string) (store.ClaimCert, error) {
	cs, err := queryClaimCerts(ctx, q, `SELECT `+claimCertColumns+` FROM claim_certs WHERE name = $1`, name)
	if err != nil {
		return store.ClaimCert{}, fmt.Errorf("get claim certificate %q: %w", name, err)
	}
	if len(cs) == 0 {
		return store.ClaimCert{}, fmt.Errorf("claim certificate %q: %w", name, store.ErrNotFound)
	}
	return cs[0], nil
}

// CreateClaimCert implements store.OnboardStore.
func (s *Store) CreateClaimCert(ctx context.Context, c store.ClaimCert) error {
	if err := checkClaimCert(c); err != nil {
		return fmt.Errorf("create claim certificate: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM claim_certs WHERE name = $1`, c.Name); err != nil {
			return fmt.Errorf("create claim certificate %q: the name %w", c.Name, err)
		}
		if err := absent(ctx, tx, `SELECT 1 FROM claim_certs WHERE serial = $1`, c.Serial); err != nil {
			return fmt.Errorf("create claim certificate %q: serial %s %w", c.Name, c.Serial, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO claim_certs (`+claimCertColumns+`) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)`,
			c.Name, c.Serial, c.Fingerprint, c.Certificate, toDB(c.NotAfter), toDB(c.CreatedAt), c.Reason); err != nil {
			return insertError("create claim certificate", c.Name, err)
		}
		return nil
	})
}

// GetClaimCert implements store.OnboardStore.
func (s *Store) GetClaimCert(ctx context.Context, name string) (store.ClaimCert, error) {
	return getClaimCert(ctx, s.ro, name)
}

// ClaimCertBySerial implements store.OnboardStore. The serial is matched
// case-insensitively, as CredentialBySerial does.
func (s *Store) ClaimCertBySerial(ctx context.Context, serial string) (store.ClaimCert, error) {
	serial = strings.ToLower(serial)
	cs, err := queryClaimCerts(ctx, s.ro, `SELECT `+claimCertColumns+` FROM claim_certs WHERE serial = $1`, serial)
	if err != nil {
		return store.ClaimCert{}, fmt.Errorf("claim certificate with serial %s: %w", serial, err)
	}
	if len(cs) == 0 {
		return store.ClaimCert{}, fmt.Errorf("claim certificate with serial %s: %w", serial, store.ErrNotFound)
	}
	return cs[0], nil
}

// ListClaimCerts implements store.OnboardStore.
func (s *Store) ListClaimCerts(ctx context.Context) ([]store.ClaimCert, error) {
	cs, err := queryClaimCerts(ctx, s.ro, `SELECT `+claimCertColumns+` FROM claim_certs ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list claim certificates: %w", err)
	}
	return cs, nil
}

// RevokeClaimCert implements store.OnboardStore.
func (s *Store) RevokeClaimCert(ctx context.Context, name, reason string, at time.Time) (store.ClaimCert, error) {
	var c store.ClaimCert
	err := s.write(ctx, func(tx *sql.Tx) error {
		cur, err := getClaimCert(ctx, tx, name)
		if err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
		if !cur.Revoked() {
			if _, err := tx.ExecContext(ctx, `UPDATE claim_certs SET revoked_at = $1, reason = $2 WHERE name = $3`,
				toDB(at), reason, name); err != nil {
				return fmt.Errorf("revoke claim certificate %q: %w", name, err)
			}
		}
		// Used enrollments stay as the record of how their devices enrolled.
		if _, err := tx.ExecContext(ctx, `DELETE FROM enrollments WHERE claim = $1 AND used_at IS NULL`, name); err != nil {
			return fmt.Errorf("revoke claim certificate %q: delete its unused enrollments: %w", name, err)
		}
		c, err = getClaimCert(ctx, tx, name)
		return err
	})
	if err != nil {
		return store.ClaimCert{}, err
	}
	return c, nil
}

// --- app claims and owners ---

// Claim implements store.OnboardStore. The token ID is checked first, so a
// replay is ErrConflict whatever became of the device since.
func (s *Store) Claim(ctx context.Context, u store.ClaimUse) (store.Device, error) {
	switch {
	case u.TokenID == "":
		return store.Device{}, errors.New("claim: empty token ID")
	case u.User == "":
		return store.Device{}, fmt.Errorf("claim with token %q: empty user", u.TokenID)
	case u.ExpiresAt.IsZero():
		// A use without expiry would be purged at once and the token could
		// then be replayed.
		return store.Device{}, fmt.Errorf("claim with token %q: no token expiry", u.TokenID)
	case u.UsedAt.IsZero():
		return store.Device{}, fmt.Errorf("claim with token %q: no use time", u.TokenID)
	}
	if err := identity.ValidateDeviceID(u.DeviceID); err != nil {
		return store.Device{}, fmt.Errorf("claim with token %q: %w", u.TokenID, err)
	}
	what := fmt.Sprintf("claim device %q for user %q", u.DeviceID, u.User)
	var d store.Device
	err := s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM claim_uses WHERE token_id = $1`, u.TokenID); err != nil {
			return fmt.Errorf("%s: token %q was used before (a replay): %w", what, u.TokenID, err)
		}
		cur, err := getDevice(ctx, tx, u.DeviceID)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if cur.State == store.StateRevoked {
			return fmt.Errorf("%s: the device is %w", what, store.ErrRevoked)
		}
		if cur.Owner != "" && cur.Owner != u.User {
			return fmt.Errorf("%s: the device is owned by another user: %w", what, store.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO claim_uses (token_id, user_name, device_id, expires_at, used_at) VALUES ($1, $2, $3, $4, $5)`,
			u.TokenID, u.User, u.DeviceID, toDB(u.ExpiresAt), toDB(u.UsedAt)); err != nil {
			return insertError(what+": record the use of token", u.TokenID, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET owner = $1, updated_at = $2 WHERE id = $3`,
			u.User, toDB(u.UsedAt), u.DeviceID); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		d, err = getDevice(ctx, tx, u.DeviceID)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return d, nil
}

// PurgeClaimUses implements store.OnboardStore.
func (s *Store) PurgeClaimUses(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM claim_uses WHERE expires_at < $1`, toDB(before))
		if err != nil {
			return fmt.Errorf("purge claim uses: %w", err)
		}
		if n, err = res.RowsAffected(); err != nil {
			return fmt.Errorf("purge claim uses: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// SetDeviceOwner implements store.OnboardStore.
func (s *Store) SetDeviceOwner(ctx context.Context, deviceID, owner string, at time.Time) (store.Device, error) {
	if err := identity.ValidateDeviceID(deviceID); err != nil {
		return store.Device{}, fmt.Errorf("set device owner: %w", err)
	}
	var d store.Device
	err := s.write(ctx, func(tx *sql.Tx) error {
		if err := liveDevice(ctx, tx, deviceID); err != nil {
			return fmt.Errorf("set owner: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET owner = $1, updated_at = $2 WHERE id = $3`,
			owner, toDB(at), deviceID); err != nil {
			return fmt.Errorf("set owner of device %q: %w", deviceID, err)
		}
		var err error
		d, err = getDevice(ctx, tx, deviceID)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return d, nil
}

// --- API tokens ---

const apiTokenColumns = `id, hash, role, user_name, note, created_at, expires_at, last_used_at, revoked_at`

// checkAPIToken catches programming errors before they reach the table.
// Errors never include the hash.
func checkAPIToken(t store.APIToken) error {
	switch {
	case t.ID == "":
		return errors.New("API token: empty ID")
	case len(t.Hash) != sha256.Size:
		return fmt.Errorf("API token %q: the hash is %d bytes, want a %d-byte SHA-256", t.ID, len(t.Hash), sha256.Size)
	case !slices.Contains(apiTokenRoles, t.Role):
		return fmt.Errorf("API token %q: unknown role %q (want one of %q)", t.ID, t.Role, apiTokenRoles)
	case t.Revoked():
		return fmt.Errorf("API token %q: a token is created unrevoked; revoke it with RevokeAPIToken", t.ID)
	}
	return nil
}

func queryAPITokens(ctx context.Context, q querier, query string, args ...any) ([]store.APIToken, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query API tokens: %w", err)
	}
	defer rows.Close()
	out := []store.APIToken{}
	for rows.Next() {
		var (
			t                      store.APIToken
			created                int64
			expires, used, revoked sql.NullInt64
		)
		if err := rows.Scan(&t.ID, &t.Hash, &t.Role, &t.User, &t.Note, &created, &expires, &used, &revoked); err != nil {
			return nil, fmt.Errorf("read API token row: %w", err)
		}
		t.CreatedAt = fromDB(created)
		t.ExpiresAt, t.LastUsedAt, t.RevokedAt = timeFromNull(expires), timeFromNull(used), timeFromNull(revoked)
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read API tokens: %w", err)
	}
	return out, nil
}

func getAPIToken(ctx context.Context, q querier, id string) (store.APIToken, error) {
	ts, err := queryAPITokens(ctx, q, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = $1`, id)
	if err != nil {
		return store.APIToken{}, fmt.Errorf("get API token %q: %w", id, err)
	}
	if len(ts) == 0 {
		return store.APIToken{}, fmt.Errorf("API token %q: %w", id, store.ErrNotFound)
	}
	return ts[0], nil
}

// CreateAPIToken implements store.OnboardStore.
func (s *Store) CreateAPIToken(ctx context.Context, t store.APIToken) error {
	if err := checkAPIToken(t); err != nil {
		return fmt.Errorf("create API token: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM api_tokens WHERE id = $1`, t.ID); err != nil {
			return fmt.Errorf("create API token %q: the ID %w", t.ID, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (`+apiTokenColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)`,
			t.ID, t.Hash, t.Role, t.User, t.Note, toDB(t.CreatedAt), nullTime(t.ExpiresAt), nullTime(t.LastUsedAt)); err != nil {
			return insertError("create API token", t.ID, err)
		}
		return nil
	})
}

// GetAPIToken implements store.OnboardStore.
func (s *Store) GetAPIToken(ctx context.Context, id string) (store.APIToken, error) {
	return getAPIToken(ctx, s.ro, id)
}

// ListAPITokens implements store.OnboardStore.
func (s *Store) ListAPITokens(ctx context.Context) ([]store.APIToken, error) {
	ts, err := queryAPITokens(ctx, s.ro, `SELECT `+apiTokenColumns+` FROM api_tokens ORDER BY created_at DESC, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	return ts, nil
}

// RevokeAPIToken implements store.OnboardStore.
func (s *Store) RevokeAPIToken(ctx context.Context, id string, at time.Time) (store.APIToken, error) {
	var t store.APIToken
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL`,
			toDB(at), id); err != nil {
			return fmt.Errorf("revoke API token %q: %w", id, err)
		}
		var err error
		t, err = getAPIToken(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
		return nil
	})
	if err != nil {
		return store.APIToken{}, err
	}
	return t, nil
}

// TouchAPIToken implements store.OnboardStore. ErrNotFound if there is no
// such token. The comparison is in the UPDATE, so concurrent touches from
// several processes never move the time backwards.
func (s *Store) TouchAPIToken(ctx context.Context, id string, at time.Time) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = $1
WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)`, toDB(at), id)
		if err != nil {
			return fmt.Errorf("touch API token %q: %w", id, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("touch API token %q: %w", id, err)
		} else if n == 1 {
			return nil
		}
		if _, err := getAPIToken(ctx, tx, id); err != nil {
			return fmt.Errorf("touch: %w", err)
		}
		return nil // used later already
	})
}

// --- CA rotations ---

const rotationColumns = `id, old_issuer, new_issuer, grace_until, state, reason, created_at, updated_at`

const rotationDeviceColumns = `rotation_id, device_id, state, serial, reason, updated_at`

// checkRotation catches programming errors in a new rotation before they
// reach the table. A zero State means running, the only state a rotation
// is created in; a zero UpdatedAt defaults to CreatedAt.
func checkRotation(r *store.Rotation) error {
	switch {
	case r.ID == "":
		return errors.New("rotation: empty ID")
	case !isDigest(r.OldIssuer):
		return fmt.Errorf("rotation %q: old issuer fingerprint %q is not 64 lowercase hex digits", r.ID, r.OldIssuer)
	case !isDigest(r.NewIssuer):
		return fmt.Errorf("rotation %q: new issuer fingerprint %q is not 64 lowercase hex digits", r.ID, r.NewIssuer)
	case r.OldIssuer == r.NewIssuer:
		return fmt.Errorf("rotation %q: the new issuer is the old one", r.ID)
	case r.GraceUntil.IsZero():
		return fmt.Errorf("rotation %q: no end of the grace period", r.ID)
	case r.State != "" && r.State != store.RotationRunning:
		return fmt.Errorf("rotation %q: state %q: a rotation is created running", r.ID, r.State)
	}
	r.State = store.RotationRunning
	if r.UpdatedAt.IsZero() {
		r.UpdatedAt = r.CreatedAt
	}
	return nil
}

func queryRotations(ctx context.Context, q querier, query string, args ...any) ([]store.Rotation, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query rotations: %w", err)
	}
	defer rows.Close()
	out := []store.Rotation{}
	for rows.Next() {
		var (
			r                       store.Rotation
			grace, created, updated int64
		)
		if err := rows.Scan(&r.ID, &r.OldIssuer, &r.NewIssuer, &grace, &r.State, &r.Reason, &created, &updated); err != nil {
			return nil, fmt.Errorf("read rotation row: %w", err)
		}
		r.GraceUntil, r.CreatedAt, r.UpdatedAt = fromDB(grace), fromDB(created), fromDB(updated)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read rotations: %w", err)
	}
	return out, nil
}

func getRotation(ctx context.Context, q querier, id string) (store.Rotation, error) {
	rs, err := queryRotations(ctx, q, `SELECT `+rotationColumns+` FROM rotations WHERE id = $1`, id)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("get rotation %q: %w", id, err)
	}
	if len(rs) == 0 {
		return store.Rotation{}, fmt.Errorf("rotation %q: %w", id, store.ErrNotFound)
	}
	return rs[0], nil
}

// CreateRotation implements store.OnboardStore. A fleet-wide rotation has
// many devices, so the statements are prepared once.
func (s *Store) CreateRotation(ctx context.Context, r store.Rotation, deviceIDs []string) error {
	if err := checkRotation(&r); err != nil {
		return fmt.Errorf("create rotation: %w", err)
	}
	seen := make(map[string]bool, len(deviceIDs))
	for _, id := range deviceIDs {
		if err := identity.ValidateDeviceID(id); err != nil {
			return fmt.Errorf("create rotation %q: %w", r.ID, err)
		}
		if seen[id] {
			return fmt.Errorf("create rotation %q: device %q is listed twice", r.ID, id)
		}
		seen[id] = true
	}
	what := fmt.Sprintf("create rotation %q", r.ID)
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM rotations WHERE id = $1`, r.ID); err != nil {
			return fmt.Errorf("%s: the ID %w", what, err)
		}
		var running string
		switch err := tx.QueryRowContext(ctx, `SELECT id FROM rotations WHERE state = $1`, store.RotationRunning).Scan(&running); {
		case err == nil:
			return fmt.Errorf("%s: rotation %q is running; finish or abort it first: %w", what, running, store.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%s: find the running rotation: %w", what, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO rotations (`+rotationColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			r.ID, r.OldIssuer, r.NewIssuer, toDB(r.GraceUntil), r.State, r.Reason, toDB(r.CreatedAt), toDB(r.UpdatedAt)); err != nil {
			return insertError("create rotation", r.ID, err)
		}
		if len(deviceIDs) == 0 {
			return nil
		}
		exists, err := tx.PrepareContext(ctx, `SELECT 1 FROM devices WHERE id = $1`)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		defer exists.Close()
		insert, err := tx.PrepareContext(ctx, `INSERT INTO rotation_devices (`+rotationDeviceColumns+`) VALUES ($1, $2, $3, '', '', $4)`)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		defer insert.Close()
		for _, id := range deviceIDs {
			var one int
			switch err := exists.QueryRowContext(ctx, id).Scan(&one); {
			case errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("%s: device %q: %w", what, id, store.ErrNotFound)
			case err != nil:
				return fmt.Errorf("%s: read device %q: %w", what, id, err)
			}
			if _, err := insert.ExecContext(ctx, r.ID, id, store.RotationDevicePending, toDB(r.CreatedAt)); err != nil {
				return insertError(what+": add device", id, err)
			}
		}
		return nil
	})
}

// GetRotation implements store.OnboardStore.
func (s *Store) GetRotation(ctx context.Context, id string) (store.Rotation, error) {
	return getRotation(ctx, s.ro, id)
}

// RunningRotation implements store.OnboardStore.
func (s *Store) RunningRotation(ctx context.Context) (store.Rotation, error) {
	rs, err := queryRotations(ctx, s.ro, `SELECT `+rotationColumns+` FROM rotations WHERE state = $1`, store.RotationRunning)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("running rotation: %w", err)
	}
	if len(rs) == 0 {
		return store.Rotation{}, fmt.Errorf("running rotation: %w", store.ErrNotFound)
	}
	return rs[0], nil
}

// ListRotations implements store.OnboardStore.
func (s *Store) ListRotations(ctx context.Context) ([]store.Rotation, error) {
	rs, err := queryRotations(ctx, s.ro, `SELECT `+rotationColumns+` FROM rotations ORDER BY created_at DESC, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list rotations: %w", err)
	}
	return rs, nil
}

// FinishRotation implements store.OnboardStore. ErrNotFound if there is
// no such rotation. The compare and set is one UPDATE.
func (s *Store) FinishRotation(ctx context.Context, id, state, reason string, at time.Time) error {
	if state != store.RotationCompleted && state != store.RotationAborted {
		return fmt.Errorf("finish rotation %q: state %q: a rotation finishes %s or %s", id, state, store.RotationCompleted, store.RotationAborted)
	}
	what := fmt.Sprintf("finish rotation %q", id)
	return s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE rotations SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5`,
			state, reason, toDB(at), id, store.RotationRunning)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		} else if n == 1 {
			return nil
		}
		cur, err := getRotation(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("finish: %w", err)
		}
		return fmt.Errorf("%s: it is %s, not running: %w", what, cur.State, store.ErrConflict)
	})
}

// SetRotationDevice implements store.OnboardStore. It refuses (not with a
// store error) a state past pending, except failed, when neither serial
// nor the stored row names the re-issued credential. The compare and set
// is one UPDATE, so it is atomic whichever handle or process runs it.
func (s *Store) SetRotationDevice(ctx context.Context, rotationID, deviceID, state, serial, reason string, at time.Time, from ...string) error {
	what := fmt.Sprintf("set state of device %q in rotation %q", deviceID, rotationID)
	switch {
	case rotationID == "":
		return fmt.Errorf("set state of device %q: empty rotation ID", deviceID)
	case !slices.Contains(rotationDeviceStates, state):
		return fmt.Errorf("%s: unknown state %q", what, state)
	case serial != "" && !isLowerHex(serial):
		return fmt.Errorf("%s: serial %q is not lowercase hex", what, serial)
	}
	if err := identity.ValidateDeviceID(deviceID); err != nil {
		return fmt.Errorf("set device state in rotation %q: %w", rotationID, err)
	}
	for _, f := range from {
		if !slices.Contains(rotationDeviceStates, f) {
			return fmt.Errorf("%s: unknown state %q to move from", what, f)
		}
	}
	from = slices.Compact(slices.Sorted(slices.Values(from)))
	var needsSerial int64
	if rotationDeviceNeedsSerial(state) {
		needsSerial = 1
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		query := `UPDATE rotation_devices SET state = $1, serial = CASE WHEN $2 = '' THEN serial ELSE $2 END, reason = $3, updated_at = $4
WHERE rotation_id = $5 AND device_id = $6 AND ($7 = 0 OR $2 <> '' OR serial <> '')`
		args := []any{state, serial, reason, toDB(at), rotationID, deviceID, needsSerial}
		if len(from) > 0 {
			marks := make([]string, len(from))
			for i, f := range from {
				args = append(args, f)
				marks[i] = fmt.Sprintf("$%d", len(args))
			}
			query += ` AND state IN (` + strings.Join(marks, ", ") + `)`
		}
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		} else if n == 1 {
			return nil
		}
		var cur, curSerial string
		switch err := tx.QueryRowContext(ctx, `SELECT state, serial FROM rotation_devices WHERE rotation_id = $1 AND device_id = $2`,
			rotationID, deviceID).Scan(&cur, &curSerial); {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%s: not part of the rotation: %w", what, store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("%s: %w", what, err)
		}
		if len(from) > 0 && !slices.Contains(from, cur) {
			return fmt.Errorf("%s: it is %s, not %s: %w", what, cur, strings.Join(from, " or "), store.ErrConflict)
		}
		return fmt.Errorf("%s: state %s needs the serial of the re-issued credential, and none is given or stored", what, state)
	})
}

// rotationExists returns ErrNotFound unless the rotation exists.
func rotationExists(ctx context.Context, q querier, id string) error {
	var one int
	switch err := q.QueryRowContext(ctx, `SELECT 1 FROM rotations WHERE id = $1`, id).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("rotation %q: %w", id, store.ErrNotFound)
	case err != nil:
		return fmt.Errorf("read rotation %q: %w", id, err)
	}
	return nil
}

// RotationDevices implements store.OnboardStore. ErrNotFound if there is
// no such rotation, so that a mistyped ID does not read as an empty one.
func (s *Store) RotationDevices(ctx context.Context, rotationID, state, after string, limit int) ([]store.RotationDevice, error) {
	if state != "" && !slices.Contains(rotationDeviceStates, state) {
		return nil, fmt.Errorf("devices of rotation %q: unknown state %q", rotationID, state)
	}
	out := []store.RotationDevice{}
	err := s.read(ctx, func(tx *sql.Tx) error {
		if err := rotationExists(ctx, tx, rotationID); err != nil {
			return fmt.Errorf("list devices: %w", err)
		}
		// Fixed text: the arguments reach the database only as arguments.
		rows, err := tx.QueryContext(ctx, `SELECT `+rotationDeviceColumns+` FROM rotation_devices
WHERE rotation_id = $1 AND device_id > $2 AND ($3 = '' OR state = $3)
ORDER BY device_id LIMIT $4`, rotationID, after, state, int64(pageSize(limit)))
		if err != nil {
			return fmt.Errorf("devices of rotation %q: %w", rotationID, err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				d       store.RotationDevice
				updated int64
			)
			if err := rows.Scan(&d.RotationID, &d.DeviceID, &d.State, &d.Serial, &d.Reason, &updated); err != nil {
				return fmt.Errorf("read device of rotation %q: %w", rotationID, err)
			}
			d.UpdatedAt = fromDB(updated)
			out = append(out, d)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("devices of rotation %q: %w", rotationID, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RotationCounts implements store.OnboardStore. The map has every
// per-device state, zero included, so a status display lists them all;
// ErrNotFound if there is no such rotation.
func (s *Store) RotationCounts(ctx context.Context, rotationID string) (map[string]int, error) {
	out := make(map[string]int, len(rotationDeviceStates))
	for _, st := range rotationDeviceStates {
		out[st] = 0
	}
	err := s.read(ctx, func(tx *sql.Tx) error {
		if err := rotationExists(ctx, tx, rotationID); err != nil {
			return fmt.Errorf("count devices: %w", err)
		}
		rows, err := tx.QueryContext(ctx, `SELECT state, count(*) FROM rotation_devices WHERE rotation_id = $1 GROUP BY state`, rotationID)
		if err != nil {
			return fmt.Errorf("count devices of rotation %q: %w", rotationID, err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				st string
				n  int
			)
			if err := rows.Scan(&st, &n); err != nil {
				return fmt.Errorf("read device count of rotation %q: %w", rotationID, err)
			}
			out[st] = n
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("count devices of rotation %q: %w", rotationID, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
