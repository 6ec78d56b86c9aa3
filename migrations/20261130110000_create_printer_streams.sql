-- Relay service: which event stream of a printer is the live one. A printer holds one
-- stream at a time: opening another takes this row over (and a hint wakes the old one,
-- wherever it is, which sees it no longer owns the printer and ends). Only the owner
-- claims the printer's jobs.
CREATE TABLE printer_streams (
    printer_id uuid        PRIMARY KEY REFERENCES printers (id) ON DELETE CASCADE,
    stream_id  uuid        NOT NULL,
    opened_at  timestamptz NOT NULL
);
