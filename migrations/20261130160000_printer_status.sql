-- Relay: live printer status (process data), apart from print files (product data).
-- The latest report per printer, and a bounded history: at most one row a minute per
-- printer (and one at each change of state), kept 24 hours.
CREATE TABLE printer_status (
    printer_id  uuid        PRIMARY KEY REFERENCES printers (id) ON DELETE CASCADE,
    status      jsonb       NOT NULL,
    reported_at timestamptz NOT NULL
);

CREATE TABLE printer_status_history (
    printer_id  uuid        NOT NULL REFERENCES printers (id) ON DELETE CASCADE,
    reported_at timestamptz NOT NULL,
    status      jsonb       NOT NULL,
    PRIMARY KEY (printer_id, reported_at)
);
CREATE INDEX printer_status_history_age ON printer_status_history (reported_at);
