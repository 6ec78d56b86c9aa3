-- Keys of the services themselves, sealed with the master key, so that they outlive a
-- rotation of it (the rotation reseals them; what they sign or MAC stays valid):
-- `mac-root`, the root of every keyed digest (pairing codes, audit checkpoints, renewal
-- challenges, device cookies); `job-signing`, the relay's Ed25519 key that signs every
-- job a printer gets (printers pin its public half when they pair). Each is made on
-- first use as the one the master key used to derive, so nothing changes for a running
-- deployment.
CREATE TABLE service_keys (
    name       text        PRIMARY KEY,
    -- The key's public id: what printers see for the job-signing key.
    key_id     text        NOT NULL,
    key_sealed bytea       NOT NULL,
    created_at timestamptz NOT NULL
);
