-- Relay: slicers send files through an OctoPrint-compatible address with a printer
-- upload key. A file sent without "print" is kept `held` until someone starts it.
ALTER TABLE print_jobs DROP CONSTRAINT print_jobs_state_check;
ALTER TABLE print_jobs ADD CONSTRAINT print_jobs_state_check
    CHECK (state IN ('receiving', 'held', 'queued', 'dispatched', 'downloading', 'printing',
                     'paused', 'completed', 'failed', 'aborted'));

DROP INDEX print_jobs_active;
CREATE INDEX print_jobs_active ON print_jobs (printer_id, seq)
    WHERE state IN ('held', 'queued', 'dispatched', 'downloading', 'printing', 'paused');

-- A held job that is started wakes the printer's stream, as a new one does.
DROP TRIGGER print_jobs_notify ON print_jobs;
CREATE TRIGGER print_jobs_notify
    AFTER UPDATE OF state, abort_requested_at, pause_requested, hold_changed_at ON print_jobs
    FOR EACH ROW WHEN ((OLD.state IN ('receiving', 'held') AND NEW.state = 'queued')
                       OR NEW.abort_requested_at IS DISTINCT FROM OLD.abort_requested_at
                       OR NEW.pause_requested IS DISTINCT FROM OLD.pause_requested
                       OR NEW.hold_changed_at IS DISTINCT FROM OLD.hold_changed_at)
    EXECUTE FUNCTION notify_printer_work();

-- A person's key to send jobs to one printer from a slicer (the OctoPrint upload API):
-- shown once, kept as its SHA-256, named, revocable. It acts with its maker's rights,
-- checked again on every use, and (where the organization has a security policy) lasts
-- as long as the sign-in it was made in.
CREATE TABLE printer_upload_keys (
    id              uuid        PRIMARY KEY,
    printer_id      uuid        NOT NULL REFERENCES printers (id) ON DELETE CASCADE,
    organization_id uuid        NOT NULL,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id      uuid,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    key_hash        bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- The first characters of the key, so that people can tell their keys apart.
    prefix          text        NOT NULL CHECK (length(prefix) BETWEEN 1 AND 16),
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX printer_upload_keys_printer ON printer_upload_keys (printer_id, user_id, created_at);
