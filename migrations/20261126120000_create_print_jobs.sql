-- Relay service: print jobs (their file is a sealed blob in the blob store), their
-- history, and the wake-up hints that reach the replica holding a printer's connection.

CREATE TABLE print_jobs (
    id                   uuid        PRIMARY KEY,
    printer_id           uuid        NOT NULL REFERENCES printers (id) ON DELETE CASCADE,
    organization_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    submitted_by         uuid        REFERENCES users (id) ON DELETE SET NULL,
    -- An automated client (client_credentials) that submitted it.
    submitted_by_client  text,
    -- A retried submission (the same Idempotency-Key from the same submitter) does
    -- not make a second job.
    idempotency_key      text        CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    name                 text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    content_type         text        NOT NULL CHECK (content_type IN ('text/x-gcode', 'application/x-ufp')),
    size                 bigint      NOT NULL CHECK (size >= 0),
    sha256               bytea       NOT NULL,
    -- Where the sealed file is, and its per-job data key sealed with the master key.
    blob_key             text        NOT NULL,
    key_sealed           bytea       NOT NULL,
    -- 'receiving' while the upload streams (never seen by printers or lists); the rest
    -- is the job's life.
    state                text        NOT NULL CHECK (state IN ('receiving', 'queued', 'dispatched',
                                        'downloading', 'printing', 'completed', 'failed', 'aborted')),
    progress             real        CHECK (progress BETWEEN 0 AND 100),
    message              text        CHECK (length(message) <= 500),
    -- The order of the printer's queue.
    seq                  bigint      GENERATED ALWAYS AS IDENTITY,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    finished_at          timestamptz,
    -- Set when someone aborted it after it reached the printer; cleared of doubt when
    -- the printer says it stopped.
    abort_requested_at   timestamptz,
    abort_acknowledged_at timestamptz,
    -- The sealed file was deleted by retention (the row and history stay).
    blob_deleted_at      timestamptz
);
CREATE UNIQUE INDEX print_jobs_idempotency ON print_jobs (printer_id, coalesce(submitted_by::text, submitted_by_client), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX print_jobs_printer ON print_jobs (printer_id, created_at);
CREATE INDEX print_jobs_active ON print_jobs (printer_id, seq)
    WHERE state IN ('queued', 'dispatched', 'downloading', 'printing');
CREATE INDEX print_jobs_receiving ON print_jobs (created_at) WHERE state = 'receiving';
CREATE INDEX print_jobs_retention ON print_jobs (finished_at) WHERE blob_deleted_at IS NULL;

-- Every change of a job, timestamped.
CREATE TABLE print_job_events (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    uuid        NOT NULL REFERENCES print_jobs (id) ON DELETE CASCADE,
    state     text        NOT NULL,
    progress  real,
    message   text,
    at        timestamptz NOT NULL
);
CREATE INDEX print_job_events_job ON print_job_events (job_id, id);

-- A wake-up hint for the replica that holds the printer's connection (never data):
-- a job queued or aborted, or the printer's security settings changed. A sweep behind
-- it makes a lost hint a delay, not a loss.
CREATE FUNCTION notify_printer_work() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('printworks_printer_work', NEW.printer_id::text);
    RETURN NEW;
END
$$;

-- Only what the printer must hear about: a job that became ready, or an abort. The
-- printer's own progress reports wake nobody.
CREATE TRIGGER print_jobs_notify
    AFTER UPDATE OF state, abort_requested_at ON print_jobs
    FOR EACH ROW WHEN ((OLD.state = 'receiving' AND NEW.state = 'queued')
                       OR NEW.abort_requested_at IS DISTINCT FROM OLD.abort_requested_at)
    EXECUTE FUNCTION notify_printer_work();

CREATE TRIGGER printer_security_notify
    AFTER INSERT OR UPDATE OF version ON printer_security
    FOR EACH ROW EXECUTE FUNCTION notify_printer_work();
