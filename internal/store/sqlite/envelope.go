package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// --- envelope keys ---

const envelopeKeyColumns = `device_id, epoch, suite, sealed_secret, state, created_at, activated_at, retired_at`

// checkEnvelopeKey catches programming errors before they reach the table.
// Errors never include the sealed secret.
func checkEnvelopeKey(k *store.EnvelopeKey) error {
	switch {
	case k.DeviceID == "":
		return errors.New("envelope key: empty device ID")
	case k.Suite == "":
		return fmt.Errorf("envelope key epoch %d of device %q: empty suite", k.Epoch, k.DeviceID)
	case k.State != store.EnvelopePending && k.State != store.EnvelopeActive:
		return fmt.Errorf("envelope key epoch %d of device %q: state %q: a key is added pending or active", k.Epoch, k.DeviceID, k.State)
	case !k.RetiredAt.IsZero():
		return fmt.Errorf("envelope key epoch %d of device %q: a new key cannot have a retirement time", k.Epoch, k.DeviceID)
	case k.State == store.EnvelopePending && !k.ActivatedAt.IsZero():
		return fmt.Errorf("envelope key epoch %d of device %q: a pending key cannot have an activation time", k.Epoch, k.DeviceID)
	}
	if k.State == store.EnvelopeActive && k.ActivatedAt.IsZero() {
		k.ActivatedAt = k.CreatedAt
	}
	return nil
}

func checkEnvelopePolicy(p store.EnvelopePolicy) error {
	switch {
	case p.DeviceID == "":
		return errors.New("envelope policy: empty device ID")
	case p.MinSuite == "":
		return fmt.Errorf("envelope policy of device %q: empty minimum suite", p.DeviceID)
	}
	return nil
}

func checkDirection(dir string) error {
	if dir != store.EnvelopeUplink && dir != store.EnvelopeDownlink {
		return fmt.Errorf("unknown envelope direction %q (want %q or %q)", dir, store.EnvelopeUplink, store.EnvelopeDownlink)
	}
	return nil
}

// liveDevice returns ErrNotFound or ErrRevoked unless the device exists and
// is not revoked.
func liveDevice(ctx context.Context, q querier, id string) error {
	st, err := subjectState(ctx, q, identity.KindDevice, id)
	if err != nil {
		return err
	}
	if st == store.StateRevoked {
		return fmt.Errorf("device %q is %w", id, store.ErrRevoked)
	}
	return nil
}

// insertEnvelopeKey checks the uniqueness rules first so the error names the
// rule; the primary key and the partial unique indexes remain the guard.
func insertEnvelopeKey(ctx context.Context, tx *sql.Tx, k store.EnvelopeKey) error {
	what := fmt.Sprintf("add envelope key epoch %d of device %q", k.Epoch, k.DeviceID)
	if err := absent(ctx, tx, `SELECT 1 FROM envelope_keys WHERE device_id = $1 AND epoch = $2`, k.DeviceID, int64(k.Epoch)); err != nil {
		return fmt.Errorf("%s: the epoch %w", what, err)
	}
	if err := absent(ctx, tx, `SELECT 1 FROM envelope_keys WHERE device_id = $1 AND state = $2`, k.DeviceID, string(k.State)); err != nil {
		return fmt.Errorf("%s: an %s key %w (at most one per device)", what, k.State, err)
	}
	secret := k.SealedSecret
	if secret == nil {
		secret = []byte{}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO envelope_keys (`+envelopeKeyColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)`,
		k.DeviceID, int64(k.Epoch), k.Suite, secret, string(k.State), toDB(k.CreatedAt), nullTime(k.ActivatedAt))
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("%s: %w", what, store.ErrConflict)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// EnableEnvelope implements store.Store.
func (s *Store) EnableEnvelope(ctx context.Context, k store.EnvelopeKey, p store.EnvelopePolicy) error {
	if err := checkEnvelopeKey(&k); err != nil {
		return fmt.Errorf("enable envelope: %w", err)
	}
	if err := checkEnvelopePolicy(p); err != nil {
		return fmt.Errorf("enable envelope: %w", err)
	}
	if k.DeviceID != p.DeviceID {
		return fmt.Errorf("enable envelope for device %q: the policy names device %q", k.DeviceID, p.DeviceID)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := liveDevice(ctx, tx, k.DeviceID); err != nil {
			return fmt.Errorf("enable envelope: %w", err)
		}
		var one int
		switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM envelope_keys WHERE device_id = $1 LIMIT 1`, k.DeviceID).Scan(&one); {
		case err == nil:
			return fmt.Errorf("enable envelope for device %q: it already has envelope keys: %w", k.DeviceID, store.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("enable envelope for device %q: read keys: %w", k.DeviceID, err)
		}
		if err := insertEnvelopeKey(ctx, tx, k); err != nil {
			return err
		}
		return upsertPolicy(ctx, tx, p)
	})
}

// AddEnvelopeKey implements store.Store.
func (s *Store) AddEnvelopeKey(ctx context.Context, k store.EnvelopeKey) error {
	if err := checkEnvelopeKey(&k); err != nil {
		return fmt.Errorf("add envelope key: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := liveDevice(ctx, tx, k.DeviceID); err != nil {
			return fmt.Errorf("add envelope key epoch %d: %w", k.Epoch, err)
		}
		return insertEnvelopeKey(ctx, tx, k)
	})
}

// EnvelopeKeys implements store.Store.
func (s *Store) EnvelopeKeys(ctx context.Context, deviceID string) ([]store.EnvelopeKey, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT `+envelopeKeyColumns+` FROM envelope_keys WHERE device_id = $1 ORDER BY epoch`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("envelope keys of device %q: %w", deviceID, err)
	}
	defer rows.Close()
	out := []store.EnvelopeKey{}
	for rows.Next() {
		var (
			k                  store.EnvelopeKey
			epoch, created     int64
			state              string
			activated, retired sql.NullInt64
		)
		if err := rows.Scan(&k.DeviceID, &epoch, &k.Suite, &k.SealedSecret, &state, &created, &activated, &retired); err != nil {
			return nil, fmt.Errorf("read envelope key of device %q: %w", deviceID, err)
		}
		if epoch < 0 || epoch > math.MaxUint32 {
			return nil, fmt.Errorf("envelope key of device %q: stored epoch %d is out of range", deviceID, epoch)
		}
		k.Epoch = uint32(epoch)
		k.State = store.EnvelopeState(state)
		k.CreatedAt = fromDB(created)
		if activated.Valid {
			k.ActivatedAt = fromDB(activated.Int64)
		}
		if retired.Valid {
			k.RetiredAt = fromDB(retired.Int64)
		}
		if len(k.SealedSecret) == 0 {
			k.SealedSecret = nil
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read envelope keys of device %q: %w", deviceID, err)
	}
	return out, nil
}

// keyState returns the state of one envelope key, or ErrNotFound.
func keyState(ctx context.Context, q querier, deviceID string, epoch uint32) (store.EnvelopeState, error) {
	var st string
	switch err := q.QueryRowContext(ctx, `SELECT state FROM envelope_keys WHERE device_id = $1 AND epoch = $2`,
		deviceID, int64(epoch)).Scan(&st); {
	case errors.Is(err, sql.ErrNoRows):
		return "", fmt.Errorf("envelope key epoch %d of device %q: %w", epoch, deviceID, store.ErrNotFound)
	case err != nil:
		return "", fmt.Errorf("read envelope key epoch %d of device %q: %w", epoch, deviceID, err)
	}
	return store.EnvelopeState(st), nil
}

// usableKey returns ErrNotFound or ErrRevoked unless the key exists and is
// not retired.
func usableKey(ctx context.Context, q querier, deviceID string, epoch uint32) error {
	st, err := keyState(ctx, q, deviceID, epoch)
	if err != nil {
		return err
	}
	if st == store.EnvelopeRetired {
		return fmt.Errorf("envelope key epoch %d of device %q is retired: %w", epoch, deviceID, store.ErrRevoked)
	}
	return nil
}

// retireEnvelopeKeys retires the device's keys in the given states and
// erases their secrets: nothing may use a retired secret again, and an
// erased one cannot decrypt recorded traffic should the database and the
// master key leak later.
func retireEnvelopeKeys(ctx context.Context, tx *sql.Tx, deviceID string, at time.Time, states ...store.EnvelopeState) error {
	for _, st := range states {
		if _, err := tx.ExecContext(ctx, `UPDATE envelope_keys SET state = $1, retired_at = $2, sealed_secret = $3
WHERE device_id = $4 AND state = $5`, string(store.EnvelopeRetired), toDB(at), []byte{}, deviceID, string(st)); err != nil {
			return fmt.Errorf("retire %s envelope keys of device %q: %w", st, deviceID, err)
		}
	}
	return nil
}

// PromoteEnvelopeKey implements store.Store.
func (s *Store) PromoteEnvelopeKey(ctx context.Context, deviceID string, epoch uint32, at time.Time) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		st, err := keyState(ctx, tx, deviceID, epoch)
		if err != nil {
			return fmt.Errorf("promote: %w", err)
		}
		switch st {
		case store.EnvelopeActive:
			return nil
		case store.EnvelopeRetired:
			return fmt.Errorf("promote envelope key epoch %d of device %q: it is retired, which is final: %w", epoch, deviceID, store.ErrRevoked)
		}
		// Retire first: the partial unique index allows one active key.
		if err := retireEnvelopeKeys(ctx, tx, deviceID, at, store.EnvelopeActive); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE envelope_keys SET state = $1, activated_at = $2 WHERE device_id = $3 AND epoch = $4`,
			string(store.EnvelopeActive), toDB(at), deviceID, int64(epoch)); err != nil {
			return fmt.Errorf("activate envelope key epoch %d of device %q: %w", epoch, deviceID, err)
		}
		return nil
	})
}

// --- envelope policies ---

func upsertPolicy(ctx context.Context, tx *sql.Tx, p store.EnvelopePolicy) error {
	var required int64
	if p.Required {
		required = 1
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO envelope_policies (device_id, min_suite, required, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (device_id) DO UPDATE SET min_suite = excluded.min_suite, required = excluded.required, updated_at = excluded.updated_at`,
		p.DeviceID, p.MinSuite, required, toDB(p.UpdatedAt))
	if err != nil {
		return fmt.Errorf("store envelope policy of device %q: %w", p.DeviceID, err)
	}
	return nil
}

// SetEnvelopePolicy implements store.Store.
func (s *Store) SetEnvelopePolicy(ctx context.Context, p store.EnvelopePolicy) error {
	if err := checkEnvelopePolicy(p); err != nil {
		return fmt.Errorf("set envelope policy: %w", err)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := liveDevice(ctx, tx, p.DeviceID); err != nil {
			return fmt.Errorf("set envelope policy: %w", err)
		}
		return upsertPolicy(ctx, tx, p)
	})
}

// GetEnvelopePolicy implements store.Store.
func (s *Store) GetEnvelopePolicy(ctx context.Context, deviceID string) (store.EnvelopePolicy, error) {
	var (
		p        = store.EnvelopePolicy{DeviceID: deviceID}
		required int64
		updated  int64
	)
	switch err := s.ro.QueryRowContext(ctx, `SELECT min_suite, required, updated_at FROM envelope_policies WHERE device_id = $1`,
		deviceID).Scan(&p.MinSuite, &required, &updated); {
	case errors.Is(err, sql.ErrNoRows):
		return store.EnvelopePolicy{}, fmt.Errorf("envelope policy of device %q: %w", deviceID, store.ErrNotFound)
	case err != nil:
		return store.EnvelopePolicy{}, fmt.Errorf("read envelope policy of device %q: %w", deviceID, err)
	}
	p.Required = required != 0
	p.UpdatedAt = fromDB(updated)
	return p, nil
}

// --- replay windows and sequence counters ---

// LoadReplayWindow implements store.Store.
func (s *Store) LoadReplayWindow(ctx context.Context, deviceID, direction string, epoch uint32) ([]byte, error) {
	if err := checkDirection(direction); err != nil {
		return nil, fmt.Errorf("load replay window of device %q: %w", deviceID, err)
	}
	var state []byte
	switch err := s.ro.QueryRowContext(ctx, `SELECT window_state FROM envelope_replay_windows
WHERE device_id = $1 AND direction = $2 AND epoch = $3`, deviceID, direction, int64(epoch)).Scan(&state); {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("load %s replay window of device %q epoch %d: %w", direction, deviceID, epoch, err)
	}
	return state, nil
}

// SaveReplayWindow implements store.Store.
func (s *Store) SaveReplayWindow(ctx context.Context, deviceID, direction string, epoch uint32, state []byte) error {
	if err := checkDirection(direction); err != nil {
		return fmt.Errorf("save replay window of device %q: %w", deviceID, err)
	}
	if len(state) == 0 || len(state) > store.MaxReplayWindowSize {
		return fmt.Errorf("save %s replay window of device %q epoch %d: state is %d bytes, want 1 to %d",
			direction, deviceID, epoch, len(state), store.MaxReplayWindowSize)
	}
	return s.write(ctx, func(tx *sql.Tx) error {
		if err := usableKey(ctx, tx, deviceID, epoch); err != nil {
			return fmt.Errorf("save %s replay window: %w", direction, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO envelope_replay_windows (device_id, direction, epoch, window_state) VALUES ($1, $2, $3, $4)
ON CONFLICT (device_id, direction, epoch) DO UPDATE SET window_state = excluded.window_state`,
			deviceID, direction, int64(epoch), state); err != nil {
			return fmt.Errorf("save %s replay window of device %q epoch %d: %w", direction, deviceID, epoch, err)
		}
		return nil
	})
}

// ReserveSequence implements store.Store. The upsert is a single statement
// whose RETURNING value is the new bound, so it is atomic on any database
// that supports ON CONFLICT ... RETURNING, not only under SQLite's one
// writer; its WHERE refuses an overflow without changing the row.
func (s *Store) ReserveSequence(ctx context.Context, deviceID, direction string, epoch uint32, step uint64) (uint64, error) {
	if err := checkDirection(direction); err != nil {
		return 0, fmt.Errorf("reserve sequence numbers of device %q: %w", deviceID, err)
	}
	if step == 0 || step > math.MaxInt64 {
		return 0, fmt.Errorf("reserve sequence numbers of device %q: step %d is outside 1..%d", deviceID, step, int64(math.MaxInt64))
	}
	var bound int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		if err := usableKey(ctx, tx, deviceID, epoch); err != nil {
			return fmt.Errorf("reserve %s sequence numbers: %w", direction, err)
		}
		err := tx.QueryRowContext(ctx, `INSERT INTO envelope_sequences (device_id, direction, epoch, next_seq) VALUES ($1, $2, $3, $4)
ON CONFLICT (device_id, direction, epoch) DO UPDATE SET next_seq = envelope_sequences.next_seq + excluded.next_seq
WHERE envelope_sequences.next_seq <= $5
RETURNING next_seq`, deviceID, direction, int64(epoch), int64(step), math.MaxInt64-int64(step)).Scan(&bound)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("reserve %d %s sequence numbers of device %q epoch %d: the counter would pass %d; rekey the device",
				step, direction, deviceID, epoch, int64(math.MaxInt64))
		case err != nil:
			return fmt.Errorf("reserve %s sequence numbers of device %q epoch %d: %w", direction, deviceID, epoch, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return uint64(bound) - step, nil
}
