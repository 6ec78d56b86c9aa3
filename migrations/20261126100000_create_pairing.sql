-- Pairing service: pairing requests (a printer waiting for someone to enter its
-- six-digit code), the certificates the printer CA issued, printers' shared secrets,
-- and the challenges of renewal by shared secret.

CREATE TABLE pairing_requests (
    id                 uuid        PRIMARY KEY,
    -- HMAC of the six-digit code under a key derived from the master key: a plain hash
    -- of a million possible codes would be no secret at all.
    code_hash          bytea       NOT NULL,
    -- sha256 of the poll token only the printer holds.
    poll_token_hash    bytea       NOT NULL,
    serial             text        NOT NULL CHECK (length(serial) BETWEEN 1 AND 64),
    model              text        NOT NULL CHECK (length(model) BETWEEN 1 AND 64),
    firmware_version   text        NOT NULL CHECK (length(firmware_version) BETWEEN 1 AND 64),
    -- The verified certificate signing request (DER): only its public key is used.
    csr_der            bytea       NOT NULL,
    source_addr        text,
    -- The address as limits count it (IPv6 by its /64).
    source_key         text,
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    state              text        NOT NULL CHECK (state IN ('pending', 'claimed', 'collected', 'expired')),
    claimed_at         timestamptz,
    claimed_by         uuid        REFERENCES users (id) ON DELETE SET NULL,
    organization_id    uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    printer_id         uuid        REFERENCES printers (id) ON DELETE CASCADE,
    -- What the printer collects once (its shared secret and certificate), sealed with
    -- the master key; erased when collected.
    credentials_sealed bytea,
    collected_at       timestamptz,
    CONSTRAINT pairing_requests_poll_token_hash_key UNIQUE (poll_token_hash)
);
-- A code is unique among the requests waiting for a claim.
CREATE UNIQUE INDEX pairing_requests_pending_code ON pairing_requests (code_hash) WHERE state = 'pending';
CREATE INDEX pairing_requests_pending_expiry ON pairing_requests (expires_at) WHERE state = 'pending';
CREATE INDEX pairing_requests_pending_source ON pairing_requests (source_key) WHERE state = 'pending';
CREATE INDEX pairing_requests_created ON pairing_requests (created_at);

CREATE TABLE printer_certificates (
    -- Hex of the certificate's serial number.
    serial       text        PRIMARY KEY,
    printer_id   uuid        NOT NULL REFERENCES printers (id) ON DELETE CASCADE,
    -- sha256 of the certificate (DER): how the printer endpoint recognises it.
    fingerprint  bytea       NOT NULL,
    not_before   timestamptz NOT NULL,
    not_after    timestamptz NOT NULL,
    issued_at    timestamptz NOT NULL,
    -- How it was issued: pairing, renewal over mutual TLS, or renewal by shared secret.
    issued_by    text        NOT NULL CHECK (issued_by IN ('pairing', 'renewal', 'secret')),
    revoked_at   timestamptz,
    revoked_reason text,
    CONSTRAINT printer_certificates_fingerprint_key UNIQUE (fingerprint)
);
CREATE INDEX printer_certificates_printer ON printer_certificates (printer_id);

-- The shared secret a printer proves with (HMAC over a server challenge) to get a new
-- certificate after its own expired. Sealed with the master key: an HMAC key cannot be
-- stored hashed.
CREATE TABLE printer_secrets (
    printer_id    uuid        PRIMARY KEY REFERENCES printers (id) ON DELETE CASCADE,
    secret_sealed bytea       NOT NULL,
    created_at    timestamptz NOT NULL
);

CREATE TABLE printer_challenges (
    challenge_hash bytea       PRIMARY KEY,
    printer_id     uuid        NOT NULL REFERENCES printers (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX printer_challenges_printer ON printer_challenges (printer_id);

-- The printer endpoint drops a live connection within moments of a revocation: every
-- way a certificate stops being valid (revoked, its printer unpaired) says so here.
CREATE FUNCTION notify_printer_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'printers' THEN
        IF OLD.unpaired_at IS NULL AND NEW.unpaired_at IS NOT NULL THEN
            PERFORM pg_notify('printworks_printer_revoked', NEW.id::text);
        END IF;
    ELSIF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
        PERFORM pg_notify('printworks_printer_revoked', NEW.printer_id::text);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER printers_notify_unpaired
    AFTER UPDATE OF unpaired_at ON printers
    FOR EACH ROW EXECUTE FUNCTION notify_printer_revoked();

CREATE TRIGGER printer_certificates_notify_revoked
    AFTER UPDATE OF revoked_at ON printer_certificates
    FOR EACH ROW EXECUTE FUNCTION notify_printer_revoked();

-- Re-pairing finds the printer of the same serial in the organization.
CREATE INDEX printers_org_serial ON printers (organization_id, serial) WHERE unpaired_at IS NULL;
