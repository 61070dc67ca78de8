-- Recovery enrollment (docs/onboarding.md): an enrollment that lets a
-- registered device that can no longer authenticate (its issuing CA is no
-- longer trusted, its certificate expired, it lost its key) enroll again.
-- Same conventions as 00001. A recovery enrollment replaces the device's
-- earlier enrollment row, so there is still one row per device ID.

-- +goose Up
-- Only a secret enrollment can be a recovery one: a fleet claim
-- certificate is shared by a factory line, and must never be able to take
-- over a registered device.
ALTER TABLE enrollments ADD COLUMN recovery INTEGER NOT NULL DEFAULT 0
    CHECK (recovery IN (0, 1) AND (recovery = 0 OR method = 'secret'));

-- +goose Down
-- A binary without recovery would read an unused recovery enrollment as a
-- first enrollment for a registered device, which it refuses anyway; a
-- used one is history. Both keep their rows.
ALTER TABLE enrollments DROP COLUMN recovery;
