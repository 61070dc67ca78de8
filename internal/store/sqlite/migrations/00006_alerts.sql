-- The anomaly monitor (docs/monitoring.md): alerts, and the devices it (or
-- an operator) quarantined. Same conventions as 00001: Unix microseconds,
-- STRICT tables. Alerts are built partly from what unauthenticated peers
-- claim (a client ID, an address), so every text column is bounded here as
-- well as in the store, whoever writes the row.

-- +goose Up
-- device_id is deliberately not a foreign key: an alert may name a device
-- that does not exist (authentication failures for a made-up ID), and it
-- stays as history whatever becomes of the device. A repeat of a finding
-- within the monitor's cool-down adds to count and moves last_seen.
CREATE TABLE alerts (
    id              TEXT    NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^0-9a-f]*'),
    detector        TEXT    NOT NULL CHECK (length(detector) BETWEEN 1 AND 256),
    severity        TEXT    NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    device_id       TEXT    NOT NULL DEFAULT '' CHECK (length(device_id) <= 256),
    service         TEXT    NOT NULL DEFAULT '' CHECK (length(service) <= 256),
    remote          TEXT    NOT NULL DEFAULT '' CHECK (length(remote) <= 256),
    summary         TEXT    NOT NULL CHECK (length(summary) BETWEEN 1 AND 1024),
    details         TEXT    NOT NULL CHECK (json_valid(details) AND json_type(details) = 'object'),
    response        TEXT    NOT NULL CHECK (response IN ('none', 'disconnect', 'quarantine')),
    count           INTEGER NOT NULL CHECK (count >= 1),
    created_at      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    acknowledged_at INTEGER,
    acknowledged_by TEXT    NOT NULL DEFAULT '' CHECK (length(acknowledged_by) <= 256),
    CHECK (last_seen >= created_at),
    CHECK ((acknowledged_at IS NULL) = (acknowledged_by = ''))
) STRICT;

CREATE INDEX alerts_created ON alerts (created_at, id);
CREATE INDEX alerts_last_seen ON alerts (last_seen);
CREATE INDEX alerts_device ON alerts (device_id, created_at) WHERE device_id <> '';
CREATE INDEX alerts_detector ON alerts (detector, created_at);
CREATE INDEX alerts_unacknowledged ON alerts (created_at, id) WHERE acknowledged_at IS NULL;

-- One row per quarantined device; releasing it deletes the row (the audit
-- log keeps the history). alert_id is not a foreign key: alerts are purged
-- after their retention, a quarantine lasts until an operator lifts it.
CREATE TABLE quarantines (
    device_id  TEXT    NOT NULL PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    reason     TEXT    NOT NULL DEFAULT '' CHECK (length(reason) <= 1024),
    alert_id   TEXT    NOT NULL DEFAULT '' CHECK (alert_id NOT GLOB '*[^0-9a-f]*'),
    actor      TEXT    NOT NULL CHECK (length(actor) BETWEEN 1 AND 256),
    created_at INTEGER NOT NULL
) STRICT;

-- The certificate expiry scan looks credentials up by expiry.
CREATE INDEX credentials_not_after ON credentials (not_after) WHERE revoked_at IS NULL;

-- +goose Down
DROP INDEX credentials_not_after;
DROP TABLE quarantines;
DROP TABLE alerts;
