package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/store"
)

// SQL lists of states, built from the store's constants so the Go and SQL
// spellings cannot drift apart.
const (
	liveRolloutStates = "('" + string(store.RolloutRunning) + "', '" + string(store.RolloutPaused) + "')"

	finishedDeviceStates = "('" + store.DeviceBooted + "', '" + store.DeviceFailed + "', '" + store.DeviceRolledBack +
		"', '" + store.DeviceTimedOut + "', '" + store.DeviceSkipped + "')"
)

// maxStages bounds a rollout's stages: each is a cumulative percentage in
// 1..100, strictly ascending, so there cannot be more.
const maxStages = 100

// stageTimeoutReason is the reason TimeOutRolloutDevices records, as the
// contract names it.
const stageTimeoutReason = "stage timeout"

// read runs fn in a read transaction on the reader pool, so that several
// queries see one snapshot.
func (s *Store) read(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.ro.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin read transaction on %s: %w", s.path, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("end read transaction on %s: %w", s.path, err)
	}
	return nil
}

// isDigest reports whether s is a lowercase hex SHA-256.
func isDigest(s string) bool { return len(s) == 2*sha256.Size && isLowerHex(s) }

// checkSequence keeps a statement sequence within what a signed 64-bit
// column (SQLite's INTEGER, PostgreSQL's bigint) stores.
func checkSequence(seq uint64) error {
	if seq > math.MaxInt64 {
		return fmt.Errorf("sequence %d is beyond %d, the largest a store keeps", seq, int64(math.MaxInt64))
	}
	return nil
}

// --- release keys ---

const releaseKeyColumns = `id, name, public_key, created_at, revoked_at`

// checkReleaseKey catches programming errors before they reach the table.
// The ID is recomputed because it is what devices and statements name the
// key by: a row whose ID is not its key's hash would make a signature check
// use the wrong key.
func checkReleaseKey(k store.ReleaseKey) error {
	switch {
	case k.ID == "":
		return errors.New("release key: empty ID")
	case !isDigest(k.ID):
		return fmt.Errorf("release key %q: the ID is not 64 lowercase hex digits", k.ID)
	case len(k.PublicKey) == 0:
		return fmt.Errorf("release key %s: empty public key", k.ID)
	case k.Revoked():
		return fmt.Errorf("release key %s: a key is added trusted; revoke it with RevokeReleaseKey", k.ID)
	}
	if sum := sha256.Sum256(k.PublicKey); hex.EncodeToString(sum[:]) != k.ID {
		return fmt.Errorf("release key %s: the ID is not the SHA-256 of the public key (that is %x)", k.ID, sum)
	}
	return nil
}

func getReleaseKey(ctx context.Context, q querier, id string) (store.ReleaseKey, error) {
	var (
		k       store.ReleaseKey
		created int64
		revoked sql.NullInt64
	)
	switch err := q.QueryRowContext(ctx, `SELECT `+releaseKeyColumns+` FROM release_keys WHERE id = $1`, id).
		Scan(&k.ID, &k.Name, &k.PublicKey, &created, &revoked); {
	case errors.Is(err, sql.ErrNoRows):
		return store.ReleaseKey{}, fmt.Errorf("release key %s: %w", id, store.ErrNotFound)
	case err != nil:
		return store.ReleaseKey{}, fmt.Errorf("read release key %s: %w", id, err)
	}
	k.CreatedAt = fromDB(created)
	if revoked.Valid {
		k.RevokedAt = fromDB(revoked.Int64)
	}
	return k, nil
}

// AddReleaseKey implements store.FirmwareStore.
func (s *Store) AddReleaseKey(ctx context.Context, k store.ReleaseKey) error {
	if err := checkReleaseKey(k); err != nil {
		return fmt.Errorf("add release key: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		cur, err := getReleaseKey(ctx, tx, k.ID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			_, err := tx.ExecContext(ctx, `INSERT INTO release_keys (`+releaseKeyColumns+`) VALUES ($1, $2, $3, $4, NULL)`,
				k.ID, k.Name, k.PublicKey, toDB(k.CreatedAt))
			if err != nil {
				return insertError("add release key", k.ID, err)
			}
			return nil
		case err != nil:
			return fmt.Errorf("add release key: %w", err)
		case !bytes.Equal(cur.PublicKey, k.PublicKey):
			return fmt.Errorf("add release key %s: the ID is stored with a different public key: %w", k.ID, store.ErrConflict)
		case cur.Revoked():
			return fmt.Errorf("add release key %s: the key was revoked at %s and trust does not come back: %w",
				k.ID, cur.RevokedAt.Format(time.RFC3339), store.ErrRevoked)
		}
		return nil // already trusted: the first name and time stand
	})
}

// GetReleaseKey implements store.FirmwareStore. The ID is matched
// case-insensitively, as an operator may paste it in either case.
func (s *Store) GetReleaseKey(ctx context.Context, id string) (store.ReleaseKey, error) {
	return getReleaseKey(ctx, s.ro, strings.ToLower(id))
}

// ReleaseKeys implements store.FirmwareStore.
func (s *Store) ReleaseKeys(ctx context.Context) ([]store.ReleaseKey, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT `+releaseKeyColumns+` FROM release_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list release keys: %w", err)
	}
	defer rows.Close()
	out := []store.ReleaseKey{}
	for rows.Next() {
		var (
			k       store.ReleaseKey
			created int64
			revoked sql.NullInt64
		)
		if err := rows.Scan(&k.ID, &k.Name, &k.PublicKey, &created, &revoked); err != nil {
			return nil, fmt.Errorf("read release key row: %w", err)
		}
		k.CreatedAt = fromDB(created)
		if revoked.Valid {
			k.RevokedAt = fromDB(revoked.Int64)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read release keys: %w", err)
	}
	return out, nil
}

// RevokeReleaseKey implements store.FirmwareStore.
func (s *Store) RevokeReleaseKey(ctx context.Context, id string, at time.Time) (store.ReleaseKey, error) {
	id = strings.ToLower(id)
	if !isDigest(id) {
		return store.ReleaseKey{}, fmt.Errorf("revoke release key %q: the ID is not 64 hex digits", id)
	}
	var k store.ReleaseKey
	err := s.write(ctx, func(tx *sql.Tx) error {
		cur, err := getReleaseKey(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
		if !cur.Revoked() {
			if _, err := tx.ExecContext(ctx, `UPDATE release_keys SET revoked_at = $1 WHERE id = $2`, toDB(at), id); err != nil {
				return fmt.Errorf("revoke release key %s: %w", id, err)
			}
		}
		k, err = getReleaseKey(ctx, tx, id)
		return err
	})
	if err != nil {
		return store.ReleaseKey{}, err
	}
	return k, nil
}

// --- firmware images ---

const imageColumns = `sha256, model, version, security_counter, size, key_id, statement, sequence, expires_at, uploaded_at, updated_at`

// checkImage catches programming errors before they reach the table, and
// defaults UpdatedAt to UploadedAt for a first upload.
func checkImage(img *store.FirmwareImage) error {
	switch {
	case img.SHA256 == "":
		return errors.New("firmware image: empty SHA-256")
	case !isDigest(img.SHA256):
		return fmt.Errorf("firmware image %q: the SHA-256 is not 64 lowercase hex digits", img.SHA256)
	case img.Model == "":
		return fmt.Errorf("firmware image %s: empty model", img.SHA256)
	case img.Version == "":
		return fmt.Errorf("firmware image %s: empty version", img.SHA256)
	case img.Size <= 0:
		return fmt.Errorf("firmware image %s: size %d, want at least 1 byte", img.SHA256, img.Size)
	case !isDigest(img.KeyID):
		return fmt.Errorf("firmware image %s: key ID %q is not 64 lowercase hex digits", img.SHA256, img.KeyID)
	case len(img.Statement) == 0:
		return fmt.Errorf("firmware image %s: empty release statement", img.SHA256)
	}
	if err := checkSequence(img.Sequence); err != nil {
		return fmt.Errorf("firmware image %s: statement %w", img.SHA256, err)
	}
	if img.UpdatedAt.IsZero() {
		img.UpdatedAt = img.UploadedAt
	}
	return nil
}

func queryImages(ctx context.Context, q querier, query string, args ...any) ([]store.FirmwareImage, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query firmware images: %w", err)
	}
	defer rows.Close()
	out := []store.FirmwareImage{}
	for rows.Next() {
		var (
			img                                      store.FirmwareImage
			counter, seq, expires, uploaded, updated int64
		)
		if err := rows.Scan(&img.SHA256, &img.Model, &img.Version, &counter, &img.Size, &img.KeyID, &img.Statement,
			&seq, &expires, &uploaded, &updated); err != nil {
			return nil, fmt.Errorf("read firmware image row: %w", err)
		}
		if counter < 0 || counter > math.MaxUint32 || seq < 0 {
			return nil, fmt.Errorf("firmware image %s: stored security counter %d or sequence %d is out of range", img.SHA256, counter, seq)
		}
		img.SecurityCounter, img.Sequence = uint32(counter), uint64(seq)
		img.ExpiresAt, img.UploadedAt, img.UpdatedAt = fromDB(expires), fromDB(uploaded), fromDB(updated)
		out = append(out, img)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read firmware images: %w", err)
	}
	return out, nil
}

func getImage(ctx context.Context, q querier, sha string) (store.FirmwareImage, error) {
	imgs, err := queryImages(ctx, q, `SELECT `+imageColumns+` FROM firmware_images WHERE sha256 = $1`, sha)
	if err != nil {
		return store.FirmwareImage{}, fmt.Errorf("get firmware image %s: %w", sha, err)
	}
	if len(imgs) == 0 {
		return store.FirmwareImage{}, fmt.Errorf("firmware image %s: %w", sha, store.ErrNotFound)
	}
	return imgs[0], nil
}

// sequenceFree returns ErrConflict if an image of model other than sha
// already has the statement sequence seq. The UNIQUE constraint remains the
// guard; this only makes the error name the other image.
func sequenceFree(ctx context.Context, tx *sql.Tx, model string, seq uint64, sha string) error {
	var other string
	switch err := tx.QueryRowContext(ctx, `SELECT sha256 FROM firmware_images WHERE model = $1 AND sequence = $2 AND sha256 <> $3`,
		model, int64(seq), sha).Scan(&other); {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("check statement sequences of model %q: %w", model, err)
	}
	return fmt.Errorf("image %s of model %q already has statement sequence %d: %w", other, model, seq, store.ErrConflict)
}

// immutableDiff names the first field in which img differs from the stored
// image cur, among those fixed by the image bytes and their signature.
func immutableDiff(cur, img store.FirmwareImage) string {
	switch {
	case cur.Model != img.Model:
		return fmt.Sprintf("model %q, stored %q", img.Model, cur.Model)
	case cur.Version != img.Version:
		return fmt.Sprintf("version %q, stored %q", img.Version, cur.Version)
	case cur.SecurityCounter != img.SecurityCounter:
		return fmt.Sprintf("security counter %d, stored %d", img.SecurityCounter, cur.SecurityCounter)
	case cur.Size != img.Size:
		return fmt.Sprintf("size %d, stored %d", img.Size, cur.Size)
	case cur.KeyID != img.KeyID:
		return fmt.Sprintf("key %s, stored %s", img.KeyID, cur.KeyID)
	}
	return ""
}

// PutFirmwareImage implements store.FirmwareStore. The image bytes fix its
// model, version, security counter, size and signing key, so a second put
// of the same SHA-256 that differs in any of them is a conflict, whatever
// its statement; and a statement of the same sequence must be the stored
// one byte for byte, expiry included.
func (s *Store) PutFirmwareImage(ctx context.Context, img store.FirmwareImage) (store.FirmwareImage, error) {
	if err := checkImage(&img); err != nil {
		return store.FirmwareImage{}, fmt.Errorf("put firmware image: %w", err)
	}
	what := "put firmware image " + img.SHA256
	var stored store.FirmwareImage
	err := s.write(ctx, func(tx *sql.Tx) error {
		k, err := getReleaseKey(ctx, tx, img.KeyID)
		if err != nil {
			return fmt.Errorf("%s: signing %w", what, err)
		}
		if k.Revoked() {
			return fmt.Errorf("%s: signing release key %s is %w", what, k.ID, store.ErrRevoked)
		}
		cur, err := getImage(ctx, tx, img.SHA256)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if err := sequenceFree(ctx, tx, img.Model, img.Sequence, img.SHA256); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO firmware_images (`+imageColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
				img.SHA256, img.Model, img.Version, int64(img.SecurityCounter), img.Size, img.KeyID, img.Statement,
				int64(img.Sequence), toDB(img.ExpiresAt), toDB(img.UploadedAt), toDB(img.UpdatedAt)); err != nil {
				return insertError("put firmware image", img.SHA256, err)
			}
		case err != nil:
			return fmt.Errorf("%s: %w", what, err)
		default:
			if diff := immutableDiff(cur, img); diff != "" {
				return fmt.Errorf("%s: the image is stored with other contents (%s): %w", what, diff, store.ErrConflict)
			}
			switch {
			case img.Sequence < cur.Sequence:
				return fmt.Errorf("%s: statement sequence %d is older than the stored %d: %w", what, img.Sequence, cur.Sequence, store.ErrConflict)
			case img.Sequence == cur.Sequence:
				if !bytes.Equal(img.Statement, cur.Statement) || toDB(img.ExpiresAt) != toDB(cur.ExpiresAt) {
					return fmt.Errorf("%s: a different statement with the stored sequence %d: %w", what, cur.Sequence, store.ErrConflict)
				}
				stored = cur
				return nil
			}
			if err := sequenceFree(ctx, tx, img.Model, img.Sequence, img.SHA256); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if _, err := tx.ExecContext(ctx, `UPDATE firmware_images SET statement = $1, sequence = $2, expires_at = $3, updated_at = $4
WHERE sha256 = $5`, img.Statement, int64(img.Sequence), toDB(img.ExpiresAt), toDB(img.UpdatedAt), img.SHA256); err != nil {
				return insertError("refresh statement of firmware image", img.SHA256, err)
			}
		}
		stored, err = getImage(ctx, tx, img.SHA256)
		return err
	})
	if err != nil {
		return store.FirmwareImage{}, err
	}
	return stored, nil
}

// GetFirmwareImage implements store.FirmwareStore. The digest is matched
// case-insensitively.
func (s *Store) GetFirmwareImage(ctx context.Context, sha string) (store.FirmwareImage, error) {
	return getImage(ctx, s.ro, strings.ToLower(sha))
}

// ListFirmwareImages implements store.FirmwareStore.
func (s *Store) ListFirmwareImages(ctx context.Context, model string) ([]store.FirmwareImage, error) {
	var (
		imgs []store.FirmwareImage
		err  error
	)
	if model == "" {
		imgs, err = queryImages(ctx, s.ro, `SELECT `+imageColumns+` FROM firmware_images ORDER BY uploaded_at DESC, sha256 DESC`)
	} else {
		imgs, err = queryImages(ctx, s.ro, `SELECT `+imageColumns+` FROM firmware_images WHERE model = $1
ORDER BY uploaded_at DESC, sha256 DESC`, model)
	}
	if err != nil {
		return nil, fmt.Errorf("list firmware images of model %q: %w", model, err)
	}
	return imgs, nil
}

// DeleteFirmwareImage implements store.FirmwareStore.
func (s *Store) DeleteFirmwareImage(ctx context.Context, sha string) error {
	sha = strings.ToLower(sha)
	if !isDigest(sha) {
		return fmt.Errorf("delete firmware image %q: the SHA-256 is not 64 hex digits", sha)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if _, err := getImage(ctx, tx, sha); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		var rollout string
		switch err := tx.QueryRowContext(ctx, `SELECT id FROM rollouts WHERE image_sha256 = $1 AND state IN `+liveRolloutStates+`
ORDER BY id LIMIT 1`, sha).Scan(&rollout); {
		case err == nil:
			return fmt.Errorf("delete firmware image %s: rollout %q uses it; abort it first: %w", sha, rollout, store.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("delete firmware image %s: find rollouts using it: %w", sha, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM firmware_images WHERE sha256 = $1`, sha); err != nil {
			return fmt.Errorf("delete firmware image %s: %w", sha, err)
		}
		return nil
	})
}

// --- rollouts ---

const rolloutColumns = `id, image_sha256, model, tags, stages, stage, failure_threshold, min_finished, timeout_us, state, reason, stage_started_at, created_at, updated_at`

const rolloutDeviceColumns = `rollout_id, device_id, stage, state, reason, updated_at`

// activeRolloutColumns are rolloutDeviceColumns then rolloutColumns, for a
// join of rollout_devices rd and rollouts r.
const activeRolloutColumns = `rd.rollout_id, rd.device_id, rd.stage, rd.state, rd.reason, rd.updated_at, ` +
	`r.id, r.image_sha256, r.model, r.tags, r.stages, r.stage, r.failure_threshold, r.min_finished, r.timeout_us, ` +
	`r.state, r.reason, r.stage_started_at, r.created_at, r.updated_at`

// checkStages enforces the shape of cumulative percentages: each stage
// widens the set, and the last one covers every member.
func checkStages(stages []int) error {
	switch {
	case len(stages) == 0:
		return errors.New("no stages")
	case len(stages) > maxStages:
		return fmt.Errorf("%d stages, at most %d", len(stages), maxStages)
	}
	for i, p := range stages {
		if p < 1 || p > 100 {
			return fmt.Errorf("stage %d is %d%%, want 1 to 100", i, p)
		}
		if i > 0 && p <= stages[i-1] {
			return fmt.Errorf("stages %v are not strictly ascending", stages)
		}
	}
	if stages[len(stages)-1] != 100 {
		return fmt.Errorf("stages %v do not end at 100%%", stages)
	}
	return nil
}

// checkRollout catches programming errors before they reach the table, and
// defaults UpdatedAt to CreatedAt.
func checkRollout(r *store.Rollout) error {
	if r.ID == "" {
		return errors.New("rollout: empty ID")
	}
	if err := checkStages(r.Stages); err != nil {
		return fmt.Errorf("rollout %q: %w", r.ID, err)
	}
	switch {
	case !isDigest(r.ImageSHA256):
		return fmt.Errorf("rollout %q: image SHA-256 %q is not 64 lowercase hex digits", r.ID, r.ImageSHA256)
	case r.Model == "":
		return fmt.Errorf("rollout %q: empty model", r.ID)
	case r.Stage < 0 || r.Stage >= len(r.Stages):
		return fmt.Errorf("rollout %q: stage %d is outside 0..%d", r.ID, r.Stage, len(r.Stages)-1)
	case !(r.FailureThreshold >= 0 && r.FailureThreshold <= 1): // also refuses NaN
		return fmt.Errorf("rollout %q: failure threshold %v is outside 0..1", r.ID, r.FailureThreshold)
	case r.MinFinished < 0:
		return fmt.Errorf("rollout %q: negative minimum of finished devices %d", r.ID, r.MinFinished)
	case r.Timeout < 0:
		return fmt.Errorf("rollout %q: negative stage timeout %v", r.ID, r.Timeout)
	case !r.State.Valid():
		return fmt.Errorf("rollout %q: unknown state %q", r.ID, r.State)
	}
	if r.UpdatedAt.IsZero() {
		r.UpdatedAt = r.CreatedAt
	}
	return nil
}

// checkMembers validates a new rollout's members and fills in what the
// caller may leave out: the rollout ID and the time.
func checkMembers(r store.Rollout, members []store.RolloutDevice) error {
	seen := make(map[string]bool, len(members))
	for i := range members {
		m := &members[i]
		switch {
		case m.DeviceID == "":
			return fmt.Errorf("member %d: empty device ID", i)
		case seen[m.DeviceID]:
			return fmt.Errorf("device %q is listed twice", m.DeviceID)
		case m.RolloutID != "" && m.RolloutID != r.ID:
			return fmt.Errorf("member %q names rollout %q", m.DeviceID, m.RolloutID)
		case m.Stage < 0 || m.Stage >= len(r.Stages):
			return fmt.Errorf("member %q: stage %d is outside 0..%d", m.DeviceID, m.Stage, len(r.Stages)-1)
		case !store.RolloutDeviceStateValid(m.State):
			return fmt.Errorf("member %q: unknown state %q", m.DeviceID, m.State)
		}
		seen[m.DeviceID] = true
		m.RolloutID = r.ID
		if m.UpdatedAt.IsZero() {
			m.UpdatedAt = r.CreatedAt
		}
	}
	return nil
}

// rolloutRow receives one rollout row; decode turns it into a Rollout.
type rolloutRow struct {
	r                                       store.Rollout
	tags, stages, state                     string
	timeout, stageStarted, created, updated int64
}

func (x *rolloutRow) dest() []any {
	return []any{&x.r.ID, &x.r.ImageSHA256, &x.r.Model, &x.tags, &x.stages, &x.r.Stage, &x.r.FailureThreshold,
		&x.r.MinFinished, &x.timeout, &x.state, &x.r.Reason, &x.stageStarted, &x.created, &x.updated}
}

func (x *rolloutRow) decode() (store.Rollout, error) {
	r := x.r
	if err := json.Unmarshal([]byte(x.tags), &r.Tags); err != nil {
		return store.Rollout{}, fmt.Errorf("rollout %q: stored tags: %w", r.ID, err)
	}
	if r.Tags == nil {
		r.Tags = map[string]string{}
	}
	if err := json.Unmarshal([]byte(x.stages), &r.Stages); err != nil {
		return store.Rollout{}, fmt.Errorf("rollout %q: stored stages: %w", r.ID, err)
	}
	if x.timeout < 0 || x.timeout > math.MaxInt64/int64(time.Microsecond) {
		return store.Rollout{}, fmt.Errorf("rollout %q: stored timeout %dµs is out of range", r.ID, x.timeout)
	}
	r.Timeout = time.Duration(x.timeout) * time.Microsecond
	r.State = store.RolloutState(x.state)
	r.StageStartedAt, r.CreatedAt, r.UpdatedAt = fromDB(x.stageStarted), fromDB(x.created), fromDB(x.updated)
	return r, nil
}

func queryRollouts(ctx context.Context, q querier, query string, args ...any) ([]store.Rollout, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query rollouts: %w", err)
	}
	defer rows.Close()
	out := []store.Rollout{}
	for rows.Next() {
		var x rolloutRow
		if err := rows.Scan(x.dest()...); err != nil {
			return nil, fmt.Errorf("read rollout row: %w", err)
		}
		r, err := x.decode()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read rollouts: %w", err)
	}
	return out, nil
}

// rolloutStages returns a rollout's state and number of stages, or
// ErrNotFound.
func rolloutStages(ctx context.Context, q querier, id string) (store.RolloutState, int, error) {
	var (
		st string
		n  int
	)
	switch err := q.QueryRowContext(ctx, `SELECT state, json_array_length(stages) FROM rollouts WHERE id = $1`, id).Scan(&st, &n); {
	case errors.Is(err, sql.ErrNoRows):
		return "", 0, fmt.Errorf("rollout %q: %w", id, store.ErrNotFound)
	case err != nil:
		return "", 0, fmt.Errorf("read rollout %q: %w", id, err)
	}
	return store.RolloutState(st), n, nil
}

func scanRolloutDevice(sc interface{ Scan(...any) error }, extra ...any) (store.RolloutDevice, error) {
	var (
		m       store.RolloutDevice
		updated int64
	)
	if err := sc.Scan(append([]any{&m.RolloutID, &m.DeviceID, &m.Stage, &m.State, &m.Reason, &updated}, extra...)...); err != nil {
		return store.RolloutDevice{}, err
	}
	m.UpdatedAt = fromDB(updated)
	return m, nil
}

// CreateRollout implements store.FirmwareStore. Besides the contract's
// checks it refuses a rollout in a final state, a rollout whose model is not
// its image's model, and a member device of another model (ErrConflict):
// an image built for other hardware must never be offered.
func (s *Store) CreateRollout(ctx context.Context, r store.Rollout, members []store.RolloutDevice) error {
	if err := checkRollout(&r); err != nil {
		return fmt.Errorf("create rollout: %w", err)
	}
	if r.State.Final() {
		return fmt.Errorf("create rollout %q: state %q: a rollout is created running or paused", r.ID, r.State)
	}
	members = slices.Clone(members)
	if err := checkMembers(r, members); err != nil {
		return fmt.Errorf("create rollout %q: %w", r.ID, err)
	}
	tags := r.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	tagsJSON, err := json.Marshal(tags)
	if err != nil {
		return fmt.Errorf("create rollout %q: encode tags: %w", r.ID, err)
	}
	stagesJSON, err := json.Marshal(r.Stages)
	if err != nil {
		return fmt.Errorf("create rollout %q: encode stages: %w", r.ID, err)
	}
	what := fmt.Sprintf("create rollout %q", r.ID)
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := absent(ctx, tx, `SELECT 1 FROM rollouts WHERE id = $1`, r.ID); err != nil {
			return fmt.Errorf("%s: the ID %w", what, err)
		}
		img, err := getImage(ctx, tx, r.ImageSHA256)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if img.Model != r.Model {
			return fmt.Errorf("%s: image %s is for model %q, not %q: %w", what, img.SHA256, img.Model, r.Model, store.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO rollouts (`+rolloutColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
			r.ID, r.ImageSHA256, r.Model, string(tagsJSON), string(stagesJSON), r.Stage, r.FailureThreshold,
			r.MinFinished, r.Timeout.Microseconds(), string(r.State), r.Reason,
			toDB(r.StageStartedAt), toDB(r.CreatedAt), toDB(r.UpdatedAt)); err != nil {
			return insertError("create rollout", r.ID, err)
		}
		return insertMembers(ctx, tx, r, members)
	})
}

// insertMembers checks and stores a new rollout's members. A fleet-wide
// rollout has many, so the statements are prepared once.
func insertMembers(ctx context.Context, tx *sql.Tx, r store.Rollout, members []store.RolloutDevice) error {
	if len(members) == 0 {
		return nil
	}
	what := fmt.Sprintf("create rollout %q", r.ID)
	model, err := tx.PrepareContext(ctx, `SELECT model FROM devices WHERE id = $1`)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer model.Close()
	live, err := tx.PrepareContext(ctx, `SELECT r.id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
WHERE rd.device_id = $1 AND r.id <> $2 AND r.state IN `+liveRolloutStates+` LIMIT 1`)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer live.Close()
	insert, err := tx.PrepareContext(ctx, `INSERT INTO rollout_devices (`+rolloutDeviceColumns+`) VALUES ($1, $2, $3, $4, $5, $6)`)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer insert.Close()
	for _, m := range members {
		var devModel string
		switch err := model.QueryRowContext(ctx, m.DeviceID).Scan(&devModel); {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%s: member device %q: %w", what, m.DeviceID, store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("%s: read member device %q: %w", what, m.DeviceID, err)
		}
		if devModel != r.Model {
			return fmt.Errorf("%s: member device %q is of model %q, not %q: %w", what, m.DeviceID, devModel, r.Model, store.ErrConflict)
		}
		var other string
		switch err := live.QueryRowContext(ctx, m.DeviceID, r.ID).Scan(&other); {
		case err == nil:
			return fmt.Errorf("%s: device %q is already in rollout %q, which is not finished: %w", what, m.DeviceID, other, store.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%s: find rollouts of device %q: %w", what, m.DeviceID, err)
		}
		if _, err := insert.ExecContext(ctx, r.ID, m.DeviceID, m.Stage, m.State, m.Reason, toDB(m.UpdatedAt)); err != nil {
			return insertError(what+": add member device", m.DeviceID, err)
		}
	}
	return nil
}

// GetRollout implements store.FirmwareStore.
func (s *Store) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	rs, err := queryRollouts(ctx, s.ro, `SELECT `+rolloutColumns+` FROM rollouts WHERE id = $1`, id)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("get rollout %q: %w", id, err)
	}
	if len(rs) == 0 {
		return store.Rollout{}, fmt.Errorf("rollout %q: %w", id, store.ErrNotFound)
	}
	return rs[0], nil
}

// ListRollouts implements store.FirmwareStore.
func (s *Store) ListRollouts(ctx context.Context) ([]store.Rollout, error) {
	rs, err := queryRollouts(ctx, s.ro, `SELECT `+rolloutColumns+` FROM rollouts ORDER BY created_at DESC, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	return rs, nil
}

// UpdateRollout implements store.FirmwareStore. It refuses to move a
// rollout out of a final state (from must not be final): nothing leaves
// one, and a rollout brought back to life could share a device with a newer
// rollout.
func (s *Store) UpdateRollout(ctx context.Context, r store.Rollout, from store.RolloutState) error {
	switch {
	case r.ID == "":
		return errors.New("update rollout: empty ID")
	case !r.State.Valid():
		return fmt.Errorf("update rollout %q: unknown state %q", r.ID, r.State)
	case !from.Valid():
		return fmt.Errorf("update rollout %q: unknown state %q to update from", r.ID, from)
	case from.Final():
		return fmt.Errorf("update rollout %q: state %q is final; nothing changes a finished rollout", r.ID, from)
	case r.Stage < 0 || r.Stage >= maxStages:
		return fmt.Errorf("update rollout %q: stage %d is outside 0..%d", r.ID, r.Stage, maxStages-1)
	}
	what := fmt.Sprintf("update rollout %q", r.ID)
	return s.write(ctx, func(tx *sql.Tx) error {
		cur, n, err := rolloutStages(ctx, tx, r.ID)
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if cur != from {
			return fmt.Errorf("%s: it is %s, not %s: %w", what, cur, from, store.ErrConflict)
		}
		if r.Stage >= n {
			return fmt.Errorf("%s: stage %d is outside 0..%d", what, r.Stage, n-1)
		}
		res, err := tx.ExecContext(ctx, `UPDATE rollouts SET stage = $1, state = $2, reason = $3, stage_started_at = $4, updated_at = $5
WHERE id = $6 AND state = $7`, r.Stage, string(r.State), r.Reason, toDB(r.StageStartedAt), toDB(r.UpdatedAt), r.ID, string(from))
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if changed, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		} else if changed != 1 {
			return fmt.Errorf("%s: it is no longer %s: %w", what, from, store.ErrConflict)
		}
		return nil
	})
}

// RolloutCounts implements store.FirmwareStore. ErrNotFound if there is no
// such rollout, so that a mistyped ID does not read as an empty rollout.
func (s *Store) RolloutCounts(ctx context.Context, id string) ([]store.RolloutCount, error) {
	// The left join yields one all-NULL row for a rollout without members
	// and none for a missing rollout, so one statement tells them apart.
	rows, err := s.ro.QueryContext(ctx, `SELECT rd.stage, rd.state, count(rd.device_id)
FROM rollouts r LEFT JOIN rollout_devices rd ON rd.rollout_id = r.id
WHERE r.id = $1
GROUP BY rd.stage, rd.state
ORDER BY rd.stage, rd.state`, id)
	if err != nil {
		return nil, fmt.Errorf("count members of rollout %q: %w", id, err)
	}
	defer rows.Close()
	var (
		out   = []store.RolloutCount{}
		found bool
	)
	for rows.Next() {
		var (
			stage sql.NullInt64
			state sql.NullString
			n     int
		)
		if err := rows.Scan(&stage, &state, &n); err != nil {
			return nil, fmt.Errorf("read member count of rollout %q: %w", id, err)
		}
		found = true
		if n > 0 {
			out = append(out, store.RolloutCount{Stage: int(stage.Int64), State: state.String, N: n})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count members of rollout %q: %w", id, err)
	}
	if !found {
		return nil, fmt.Errorf("rollout %q: %w", id, store.ErrNotFound)
	}
	return out, nil
}

// pageSize is store.DeviceFilter.PageSize for a RolloutDeviceFilter.
func pageSize(limit int) int {
	return store.DeviceFilter{Limit: limit}.PageSize()
}

// ListRolloutDevices implements store.FirmwareStore. ErrNotFound if there
// is no such rollout.
func (s *Store) ListRolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error) {
	if f.State != "" && !store.RolloutDeviceStateValid(f.State) {
		return nil, fmt.Errorf("list devices of rollout %q: unknown state %q", id, f.State)
	}
	out := []store.RolloutDevice{}
	err := s.read(ctx, func(tx *sql.Tx) error {
		if _, _, err := rolloutStages(ctx, tx, id); err != nil {
			return fmt.Errorf("list devices: %w", err)
		}
		// Fixed text: the filter reaches the database only as arguments.
		rows, err := tx.QueryContext(ctx, `SELECT `+rolloutDeviceColumns+` FROM rollout_devices
WHERE rollout_id = $1 AND device_id > $2 AND ($3 = '' OR state = $3)
ORDER BY device_id LIMIT $4`, id, f.After, f.State, int64(pageSize(f.Limit)))
		if err != nil {
			return fmt.Errorf("list devices of rollout %q: %w", id, err)
		}
		defer rows.Close()
		for rows.Next() {
			m, err := scanRolloutDevice(rows)
			if err != nil {
				return fmt.Errorf("read member of rollout %q: %w", id, err)
			}
			out = append(out, m)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("list devices of rollout %q: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ActiveRollout implements store.FirmwareStore.
func (s *Store) ActiveRollout(ctx context.Context, deviceID string) (store.Rollout, store.RolloutDevice, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT `+activeRolloutColumns+`
FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
WHERE rd.device_id = $1 AND r.state IN `+liveRolloutStates+`
ORDER BY r.created_at DESC, r.id DESC LIMIT 2`, deviceID)
	if err != nil {
		return store.Rollout{}, store.RolloutDevice{}, fmt.Errorf("active rollout of device %q: %w", deviceID, err)
	}
	defer rows.Close()
	var (
		rs []store.Rollout
		ms []store.RolloutDevice
	)
	for rows.Next() {
		var x rolloutRow
		m, err := scanRolloutDevice(rows, x.dest()...)
		if err != nil {
			return store.Rollout{}, store.RolloutDevice{}, fmt.Errorf("read active rollout of device %q: %w", deviceID, err)
		}
		r, err := x.decode()
		if err != nil {
			return store.Rollout{}, store.RolloutDevice{}, err
		}
		rs, ms = append(rs, r), append(ms, m)
	}
	if err := rows.Err(); err != nil {
		return store.Rollout{}, store.RolloutDevice{}, fmt.Errorf("read active rollout of device %q: %w", deviceID, err)
	}
	switch len(rs) {
	case 0:
		return store.Rollout{}, store.RolloutDevice{}, fmt.Errorf("active rollout of device %q: %w", deviceID, store.ErrNotFound)
	case 1:
		return rs[0], ms[0], nil
	}
	// Only a writer that bypassed CreateRollout gets here; guessing which
	// rollout should update the device could install the wrong image.
	return store.Rollout{}, store.RolloutDevice{}, fmt.Errorf("active rollout of device %q: it is in rollouts %q and %q at once; abort one of them",
		deviceID, rs[0].ID, rs[1].ID)
}

// SetRolloutDeviceState implements store.FirmwareStore. The compare and
// set is one UPDATE, so it is atomic whichever handle or process runs it.
func (s *Store) SetRolloutDeviceState(ctx context.Context, rolloutID, deviceID, state, reason string, at time.Time, from ...string) error {
	what := fmt.Sprintf("set state of device %q in rollout %q", deviceID, rolloutID)
	switch {
	case rolloutID == "":
		return fmt.Errorf("set state of device %q: empty rollout ID", deviceID)
	case deviceID == "":
		return fmt.Errorf("set device state in rollout %q: empty device ID", rolloutID)
	case !store.RolloutDeviceStateValid(state):
		return fmt.Errorf("%s: unknown state %q", what, state)
	}
	for _, f := range from {
		if !store.RolloutDeviceStateValid(f) {
			return fmt.Errorf("%s: unknown state %q to move from", what, f)
		}
	}
	from = slices.Compact(slices.Sorted(slices.Values(from)))
	return s.write(ctx, func(tx *sql.Tx) error {
		query := `UPDATE rollout_devices SET state = $1, reason = $2, updated_at = $3 WHERE rollout_id = $4 AND device_id = $5`
		args := []any{state, reason, toDB(at), rolloutID, deviceID}
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
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if n == 1 {
			return nil
		}
		var cur string
		switch err := tx.QueryRowContext(ctx, `SELECT state FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2`,
			rolloutID, deviceID).Scan(&cur); {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%s: not a member: %w", what, store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%s: it is %s, not %s: %w", what, cur, strings.Join(from, " or "), store.ErrConflict)
	})
}

// TimeOutRolloutDevices implements store.FirmwareStore. ErrNotFound if
// there is no such rollout; maxStage must be one of its stages.
func (s *Store) TimeOutRolloutDevices(ctx context.Context, rolloutID string, maxStage int, at time.Time) (int, error) {
	what := fmt.Sprintf("time out devices of rollout %q", rolloutID)
	switch {
	case rolloutID == "":
		return 0, errors.New("time out rollout devices: empty rollout ID")
	case maxStage < 0 || maxStage >= maxStages:
		return 0, fmt.Errorf("%s: stage %d is outside 0..%d", what, maxStage, maxStages-1)
	}
	var moved int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, n, err := rolloutStages(ctx, tx, rolloutID)
		if err != nil {
			return fmt.Errorf("time out devices: %w", err)
		}
		if maxStage >= n {
			return fmt.Errorf("%s: stage %d is outside 0..%d", what, maxStage, n-1)
		}
		res, err := tx.ExecContext(ctx, `UPDATE rollout_devices SET state = $1, reason = $2, updated_at = $3
WHERE rollout_id = $4 AND stage <= $5 AND state NOT IN `+finishedDeviceStates,
			store.DeviceTimedOut, stageTimeoutReason, toDB(at), rolloutID, maxStage)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if moved, err = res.RowsAffected(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return int(moved), nil
}

// --- what devices run ---

// SetDeviceFirmware implements store.FirmwareStore.
func (s *Store) SetDeviceFirmware(ctx context.Context, f store.DeviceFirmware) error {
	switch {
	case f.DeviceID == "":
		return errors.New("set device firmware: empty device ID")
	case f.Version == "":
		return fmt.Errorf("set firmware of device %q: empty version", f.DeviceID)
	case f.ImageSHA256 != "" && !isDigest(f.ImageSHA256):
		return fmt.Errorf("set firmware of device %q: image SHA-256 %q is not 64 lowercase hex digits", f.DeviceID, f.ImageSHA256)
	}
	if err := checkSequence(f.Sequence); err != nil {
		return fmt.Errorf("set firmware of device %q: statement %w", f.DeviceID, err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		var one int
		switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = $1`, f.DeviceID).Scan(&one); {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("set firmware: device %q: %w", f.DeviceID, store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("set firmware of device %q: %w", f.DeviceID, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO device_firmware (device_id, version, security_counter, image_sha256, sequence, reported_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, security_counter = excluded.security_counter,
    image_sha256 = excluded.image_sha256, sequence = excluded.sequence, reported_at = excluded.reported_at`,
			f.DeviceID, f.Version, int64(f.SecurityCounter), f.ImageSHA256, int64(f.Sequence), toDB(f.ReportedAt)); err != nil {
			return fmt.Errorf("set firmware of device %q: %w", f.DeviceID, err)
		}
		return nil
	})
}

// GetDeviceFirmware implements store.FirmwareStore.
func (s *Store) GetDeviceFirmware(ctx context.Context, deviceID string) (store.DeviceFirmware, error) {
	var (
		f                      = store.DeviceFirmware{DeviceID: deviceID}
		counter, seq, reported int64
	)
	switch err := s.ro.QueryRowContext(ctx, `SELECT version, security_counter, image_sha256, sequence, reported_at
FROM device_firmware WHERE device_id = $1`, deviceID).Scan(&f.Version, &counter, &f.ImageSHA256, &seq, &reported); {
	case errors.Is(err, sql.ErrNoRows):
		return store.DeviceFirmware{}, fmt.Errorf("firmware of device %q: %w", deviceID, store.ErrNotFound)
	case err != nil:
		return store.DeviceFirmware{}, fmt.Errorf("read firmware of device %q: %w", deviceID, err)
	}
	if counter < 0 || counter > math.MaxUint32 || seq < 0 {
		return store.DeviceFirmware{}, fmt.Errorf("firmware of device %q: stored security counter %d or sequence %d is out of range", deviceID, counter, seq)
	}
	f.SecurityCounter, f.Sequence = uint32(counter), uint64(seq)
	f.ReportedAt = fromDB(reported)
	return f, nil
}
