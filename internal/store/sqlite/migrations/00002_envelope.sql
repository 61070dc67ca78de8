-- Sealed-envelope devices (docs/envelope.md): per-epoch master secrets, the
-- per-device policy, and the receiver's replay windows and the sender's
-- persist-ahead sequence counters. Same conventions as 00001: Unix
-- microseconds, STRICT tables; booleans are 0/1 integers.

-- +goose Up
-- One row per key epoch. sealed_secret is the keystore-sealed master secret
-- (record name "envelope/<device>/<epoch>"), empty for sign-p256 and once the
-- key is retired (a retired secret is erased, not kept).
CREATE TABLE envelope_keys (
    device_id     TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    epoch         INTEGER NOT NULL CHECK (epoch BETWEEN 0 AND 4294967295),
    suite         TEXT    NOT NULL CHECK (suite <> ''),
    sealed_secret BLOB    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
    created_at    INTEGER NOT NULL,
    activated_at  INTEGER,
    retired_at    INTEGER,
    PRIMARY KEY (device_id, epoch),
    CHECK ((state = 'retired') = (retired_at IS NOT NULL)),
    CHECK (state <> 'active' OR activated_at IS NOT NULL),
    CHECK (state <> 'pending' OR activated_at IS NULL)
) STRICT;

-- At most one active and one pending key per device, whoever writes: the
-- store's own checks only make the error say which rule was broken.
CREATE UNIQUE INDEX envelope_keys_one_active ON envelope_keys (device_id) WHERE state = 'active';
CREATE UNIQUE INDEX envelope_keys_one_pending ON envelope_keys (device_id) WHERE state = 'pending';

-- A row here is what makes a device an envelope device.
CREATE TABLE envelope_policies (
    device_id  TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    min_suite  TEXT    NOT NULL CHECK (min_suite <> ''),
    required   INTEGER NOT NULL CHECK (required IN (0, 1)),
    updated_at INTEGER NOT NULL
) STRICT;

-- Opaque replay-window state per (device, direction, epoch), bounded so a
-- bug cannot grow rows without limit.
CREATE TABLE envelope_replay_windows (
    device_id    TEXT    NOT NULL,
    direction    TEXT    NOT NULL CHECK (direction IN ('uplink', 'downlink')),
    epoch        INTEGER NOT NULL,
    window_state BLOB    NOT NULL CHECK (length(window_state) BETWEEN 1 AND 64),
    PRIMARY KEY (device_id, direction, epoch),
    FOREIGN KEY (device_id, epoch) REFERENCES envelope_keys (device_id, epoch) ON DELETE CASCADE
) STRICT;

-- The next sequence number not yet handed out per (device, direction, epoch).
CREATE TABLE envelope_sequences (
    device_id TEXT    NOT NULL,
    direction TEXT    NOT NULL CHECK (direction IN ('uplink', 'downlink')),
    epoch     INTEGER NOT NULL,
    next_seq  INTEGER NOT NULL CHECK (next_seq >= 0),
    PRIMARY KEY (device_id, direction, epoch),
    FOREIGN KEY (device_id, epoch) REFERENCES envelope_keys (device_id, epoch) ON DELETE CASCADE
) STRICT;

-- +goose Down
DROP TABLE envelope_sequences;
DROP TABLE envelope_replay_windows;
DROP TABLE envelope_policies;
DROP TABLE envelope_keys;
