-- Listing a user's devices (ListDevices with an owner: the app's "my
-- devices", and every claim check that counts them) read every device row
-- in ID order to find the few of one owner. Same conventions as 00001.

-- +goose Up
CREATE INDEX devices_owner_id ON devices (owner, id);

-- +goose Down
DROP INDEX devices_owner_id;
