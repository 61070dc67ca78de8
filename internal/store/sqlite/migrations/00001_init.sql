-- Warden store schema, SQLite dialect. Times are INTEGER Unix microseconds
-- (UTC), the resolution PostgreSQL's timestamptz keeps, so both backends
-- round-trip the same values. Tables are STRICT so a type mistake in the Go
-- code fails loudly instead of storing text in an integer column.

-- +goose Up
CREATE TABLE devices (
    id           TEXT    NOT NULL PRIMARY KEY,
    model        TEXT    NOT NULL DEFAULT '',
    state        TEXT    NOT NULL CHECK (state IN ('active', 'disabled', 'revoked')),
    state_reason TEXT    NOT NULL DEFAULT '',
    owner        TEXT    NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX devices_state_id ON devices (state, id);
CREATE INDEX devices_model_id ON devices (model, id);

CREATE TABLE device_tags (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
) STRICT;

CREATE INDEX device_tags_key_value ON device_tags (key, value, device_id);

CREATE TABLE services (
    name         TEXT    NOT NULL PRIMARY KEY,
    role         TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('active', 'disabled', 'revoked')),
    state_reason TEXT    NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

-- A credential's subject is a device or a service, so it cannot carry a
-- foreign key; the store checks the subject inside the inserting transaction.
CREATE TABLE credentials (
    serial            TEXT    NOT NULL PRIMARY KEY,
    subject_kind      TEXT    NOT NULL CHECK (subject_kind IN ('device', 'service')),
    subject_id        TEXT    NOT NULL,
    fingerprint       TEXT    NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    csr               BLOB    NOT NULL,
    certificate       BLOB    NOT NULL,
    created_at        INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX credentials_subject ON credentials (subject_kind, subject_id, created_at);
CREATE INDEX credentials_revoked ON credentials (revoked_at) WHERE revoked_at IS NOT NULL;

-- +goose Down
DROP TABLE credentials;
DROP TABLE services;
DROP TABLE device_tags;
DROP TABLE devices;
