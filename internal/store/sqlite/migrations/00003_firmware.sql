-- Firmware updates: trusted release keys, stored images with their current
-- release statement, staged rollouts and their frozen member sets, and what
-- each device last reported running. Same conventions as 00001: Unix
-- microseconds, STRICT tables. Hex digests are 64 lowercase hex digits; the
-- GLOB refuses anything else, whoever writes the row.

-- +goose Up
-- Only public keys: the server cannot forge a release. A revoked key keeps
-- its row (and revoked_at) so that it is never trusted again.
CREATE TABLE release_keys (
    id         TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 64 AND id NOT GLOB '*[^0-9a-f]*'),
    name       TEXT    NOT NULL DEFAULT '',
    public_key BLOB    NOT NULL CHECK (length(public_key) > 0),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

-- One row per image file. sequence orders the release statements of a
-- model, so two images of one model never share a sequence number.
CREATE TABLE firmware_images (
    sha256           TEXT    NOT NULL PRIMARY KEY CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    model            TEXT    NOT NULL CHECK (model <> ''),
    version          TEXT    NOT NULL CHECK (version <> ''),
    security_counter INTEGER NOT NULL CHECK (security_counter BETWEEN 0 AND 4294967295),
    size             INTEGER NOT NULL CHECK (size > 0),
    key_id           TEXT    NOT NULL REFERENCES release_keys (id),
    statement        BLOB    NOT NULL CHECK (length(statement) > 0),
    sequence         INTEGER NOT NULL CHECK (sequence >= 0),
    expires_at       INTEGER NOT NULL,
    uploaded_at      INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (model, sequence)
) STRICT;

CREATE INDEX firmware_images_uploaded ON firmware_images (uploaded_at, sha256);
CREATE INDEX firmware_images_model_uploaded ON firmware_images (model, uploaded_at, sha256);
CREATE INDEX firmware_images_key ON firmware_images (key_id);

-- image_sha256 is deliberately not a foreign key: an image may be deleted
-- once no running or paused rollout uses it, and the finished rollouts that
-- did use it remain as history. The store checks the image inside the
-- transaction that creates a rollout.
--
-- tags is a JSON object of string values; stages a JSON array of cumulative
-- percentages, strictly ascending within 1..100 and ending at 100 (the
-- ascending rule needs a subquery, which a CHECK cannot hold, so the store
-- enforces it). timeout_us is the stage timeout in microseconds.
CREATE TABLE rollouts (
    id                TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
    image_sha256      TEXT    NOT NULL CHECK (length(image_sha256) = 64 AND image_sha256 NOT GLOB '*[^0-9a-f]*'),
    model             TEXT    NOT NULL CHECK (model <> ''),
    tags              TEXT    NOT NULL CHECK (json_valid(tags) AND json_type(tags) = 'object'),
    stages            TEXT    NOT NULL CHECK (json_valid(stages) AND json_type(stages) = 'array'
                                              AND json_array_length(stages) BETWEEN 1 AND 100
                                              AND json_type(stages, '$[0]') = 'integer'
                                              AND json_extract(stages, '$[0]') >= 1
                                              AND json_type(stages, '$[#-1]') = 'integer'
                                              AND json_extract(stages, '$[#-1]') = 100),
    stage             INTEGER NOT NULL CHECK (stage >= 0 AND stage < json_array_length(stages)),
    failure_threshold REAL    NOT NULL CHECK (failure_threshold BETWEEN 0 AND 1),
    min_finished      INTEGER NOT NULL CHECK (min_finished >= 0),
    timeout_us        INTEGER NOT NULL CHECK (timeout_us >= 0),
    state             TEXT    NOT NULL CHECK (state IN ('running', 'paused', 'aborted', 'completed')),
    reason            TEXT    NOT NULL DEFAULT '',
    stage_started_at  INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;

CREATE INDEX rollouts_created ON rollouts (created_at, id);
CREATE INDEX rollouts_image ON rollouts (image_sha256);

-- The frozen member set of a rollout. A device is in at most one rollout
-- that is running or paused; that spans two tables, so the store enforces it
-- in the transaction that creates a rollout, and the device_id index makes
-- both that check and ActiveRollout an index lookup.
CREATE TABLE rollout_devices (
    rollout_id TEXT    NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id  TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    stage      INTEGER NOT NULL CHECK (stage BETWEEN 0 AND 99),
    state      TEXT    NOT NULL CHECK (state IN ('pending', 'offered', 'downloading', 'verified', 'installing',
                                                 'booted', 'failed', 'rolled-back', 'timed-out', 'skipped')),
    reason     TEXT    NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
) STRICT;

CREATE INDEX rollout_devices_device ON rollout_devices (device_id);
CREATE INDEX rollout_devices_state ON rollout_devices (rollout_id, state, device_id);

-- What a device last reported running; image_sha256 is empty if it did not
-- say, sequence 0 if unknown.
CREATE TABLE device_firmware (
    device_id        TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    version          TEXT    NOT NULL CHECK (version <> ''),
    security_counter INTEGER NOT NULL CHECK (security_counter BETWEEN 0 AND 4294967295),
    image_sha256     TEXT    NOT NULL CHECK (image_sha256 = '' OR (length(image_sha256) = 64 AND image_sha256 NOT GLOB '*[^0-9a-f]*')),
    sequence         INTEGER NOT NULL CHECK (sequence >= 0),
    reported_at      INTEGER NOT NULL
) STRICT;

-- +goose Down
DROP TABLE device_firmware;
DROP TABLE rollout_devices;
DROP TABLE rollouts;
DROP TABLE firmware_images;
DROP TABLE release_keys;
