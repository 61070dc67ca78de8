-- Onboarding and the certificate lifecycle (docs/onboarding.md):
-- preregistered enrollments, fleet claim certificates, used app claim
-- tokens, API tokens, and CA rotations with their per-device progress. Same
-- conventions as 00001: Unix microseconds, STRICT tables. Hex serials and
-- fingerprints are lowercase; the GLOBs refuse anything else, whoever writes
-- the row. The user columns are user_name because PostgreSQL reserves USER.

-- +goose Up
-- Claim certificate rows are never deleted: a revoked one keeps its row so
-- that its serial is never trusted again, and used enrollments name it.
CREATE TABLE claim_certs (
    name        TEXT    NOT NULL PRIMARY KEY CHECK (name <> ''),
    serial      TEXT    NOT NULL UNIQUE CHECK (serial <> '' AND serial NOT GLOB '*[^0-9a-f]*'),
    fingerprint TEXT    NOT NULL CHECK (length(fingerprint) = 64 AND fingerprint NOT GLOB '*[^0-9a-f]*'),
    certificate BLOB    NOT NULL CHECK (length(certificate) > 0),
    not_after   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    reason      TEXT    NOT NULL DEFAULT ''
) STRICT;

-- One row per preregistered device ID; it stays once used, as the record of
-- how the device enrolled. The device ID follows the grammar of identity
-- ([A-Za-z0-9][A-Za-z0-9_-]{0,63}). tags is a JSON object of string values.
-- A secret enrollment holds the keystore-sealed secret and names no claim
-- certificate; a claim enrollment names one and holds no secret. A used
-- enrollment carries the serial of the certificate the device enrolled with.
CREATE TABLE enrollments (
    device_id  TEXT    NOT NULL PRIMARY KEY CHECK (length(device_id) BETWEEN 1 AND 64
                                                   AND device_id GLOB '[A-Za-z0-9]*'
                                                   AND device_id NOT GLOB '*[^-A-Za-z0-9_]*'),
    method     TEXT    NOT NULL CHECK (method IN ('secret', 'claim')),
    claim      TEXT    REFERENCES claim_certs (name),
    model      TEXT    NOT NULL DEFAULT '',
    tags       TEXT    NOT NULL CHECK (json_valid(tags) AND json_type(tags) = 'object'),
    secret     BLOB,
    created_at INTEGER NOT NULL,
    used_at    INTEGER,
    serial     TEXT    NOT NULL DEFAULT '' CHECK (serial NOT GLOB '*[^0-9a-f]*'),
    CHECK ((method = 'secret' AND secret IS NOT NULL AND length(secret) > 0 AND claim IS NULL)
        OR (method = 'claim' AND claim IS NOT NULL AND claim <> '' AND secret IS NULL)),
    CHECK ((used_at IS NULL) = (serial = ''))
) STRICT;

CREATE INDEX enrollments_claim ON enrollments (claim, device_id) WHERE claim IS NOT NULL;

-- A used app claim token, kept until it expires so that it cannot be
-- replayed. device_id is deliberately not a foreign key: the row guards the
-- token, whatever becomes of the device.
CREATE TABLE claim_uses (
    token_id   TEXT    NOT NULL PRIMARY KEY CHECK (token_id <> ''),
    user_name  TEXT    NOT NULL CHECK (user_name <> ''),
    device_id  TEXT    NOT NULL CHECK (device_id <> ''),
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX claim_uses_expires ON claim_uses (expires_at);

-- Only the SHA-256 of a token's secret part is stored.
CREATE TABLE api_tokens (
    id           TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
    hash         BLOB    NOT NULL CHECK (length(hash) = 32),
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'app')),
    user_name    TEXT    NOT NULL DEFAULT '',
    note         TEXT    NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX api_tokens_created ON api_tokens (created_at, id);

-- Issuers are the SHA-256 fingerprints of the issuing CA certificates.
CREATE TABLE rotations (
    id          TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
    old_issuer  TEXT    NOT NULL CHECK (length(old_issuer) = 64 AND old_issuer NOT GLOB '*[^0-9a-f]*'),
    new_issuer  TEXT    NOT NULL CHECK (length(new_issuer) = 64 AND new_issuer NOT GLOB '*[^0-9a-f]*'),
    grace_until INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('running', 'completed', 'aborted')),
    reason      TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK (new_issuer <> old_issuer)
) STRICT;

-- At most one rotation runs at a time, whoever writes: the store's own
-- check only makes the error name the running one.
CREATE UNIQUE INDEX rotations_one_running ON rotations (state) WHERE state = 'running';
CREATE INDEX rotations_created ON rotations (created_at, id);

-- A device past pending, except a failed one, has been re-issued, so it
-- names the new credential.
CREATE TABLE rotation_devices (
    rotation_id TEXT    NOT NULL REFERENCES rotations (id) ON DELETE CASCADE,
    device_id   TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'issued', 'delivered', 'switched', 'failed')),
    serial      TEXT    NOT NULL DEFAULT '' CHECK (serial NOT GLOB '*[^0-9a-f]*'),
    reason      TEXT    NOT NULL DEFAULT '',
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (rotation_id, device_id),
    CHECK (state IN ('pending', 'failed') OR serial <> '')
) STRICT;

CREATE INDEX rotation_devices_state ON rotation_devices (rotation_id, state, device_id);
CREATE INDEX rotation_devices_device ON rotation_devices (device_id);

-- +goose Down
DROP TABLE rotation_devices;
DROP TABLE rotations;
DROP TABLE api_tokens;
DROP TABLE claim_uses;
DROP TABLE enrollments;
DROP TABLE claim_certs;
