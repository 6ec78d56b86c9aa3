-- Relay: a print can be paused and resumed. The printer holds it on a `pause` event and
-- reports `paused`; on `resume` it goes on and reports `printing` again.
ALTER TABLE print_jobs DROP CONSTRAINT print_jobs_state_check;
ALTER TABLE print_jobs ADD CONSTRAINT print_jobs_state_check
    CHECK (state IN ('receiving', 'queued', 'dispatched', 'downloading', 'printing', 'paused',
                     'completed', 'failed', 'aborted'));

-- What people last asked of the printer for the job: hold it (true) or go on (false),
-- and when they asked (null: never).
ALTER TABLE print_jobs ADD COLUMN pause_requested boolean NOT NULL DEFAULT false;
ALTER TABLE print_jobs ADD COLUMN hold_changed_at timestamptz;

DROP INDEX print_jobs_active;
CREATE INDEX print_jobs_active ON print_jobs (printer_id, seq)
    WHERE state IN ('queued', 'dispatched', 'downloading', 'printing', 'paused');

-- A pause or resume wakes the printer's stream, as an abort does.
DROP TRIGGER print_jobs_notify ON print_jobs;
CREATE TRIGGER print_jobs_notify
    AFTER UPDATE OF state, abort_requested_at, pause_requested, hold_changed_at ON print_jobs
    FOR EACH ROW WHEN ((OLD.state = 'receiving' AND NEW.state = 'queued')
                       OR NEW.abort_requested_at IS DISTINCT FROM OLD.abort_requested_at
                       OR NEW.pause_requested IS DISTINCT FROM OLD.pause_requested
                       OR NEW.hold_changed_at IS DISTINCT FROM OLD.hold_changed_at)
    EXECUTE FUNCTION notify_printer_work();
