-- Relay resources bounded: one live event stream per printer, and what quotas read.

-- Relay service: which event stream of a printer is the live one. A printer holds one
-- stream at a time: opening another takes this row over (and a hint wakes the old one,
-- wherever it is, which sees it no longer owns the printer and ends). Only the owner
-- claims the printer's jobs.
CREATE TABLE printer_streams (
    printer_id uuid        PRIMARY KEY REFERENCES printers (id) ON DELETE CASCADE,
    stream_id  uuid        NOT NULL,
    opened_at  timestamptz NOT NULL
);

-- Quotas: what an organization's jobs hold (unfinished jobs, and files not yet deleted
-- by retention — every unfinished job's file is among them) is read at every upload.
CREATE INDEX print_jobs_org_stored ON print_jobs (organization_id, printer_id) WHERE blob_deleted_at IS NULL;
