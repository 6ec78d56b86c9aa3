-- The settings a printer confirmed but could not apply (a printer behind OctoPrint has
-- no firewall the agent could close and no settings PIN): said, never silently claimed.
ALTER TABLE printer_security
    ADD COLUMN not_applied text[] NOT NULL DEFAULT '{}'
        CHECK (not_applied <@ ARRAY['firewall', 'pin']::text[]);
