-- Pairing, hardened (docs/security.md, "Printers and pairing"):
--
-- - a pairing request may prove that it comes from a printer already paired (an HMAC of
--   its shared secret over a server challenge and its new CSR): only such a request
--   re-pairs that printer under the same identity; any other is a new printer;
-- - pending requests are counted per source network (IPv4 /24, IPv6 /48) as well as per
--   address, so one network cannot fill the service-wide limit;
-- - wrong codes entered without the printer's serial spend one service-wide budget (a
--   token bucket); once it is spent, a claim must name the serial too;
-- - renewal challenges are no longer stored when issued (they are MACs that carry their
--   expiry); the table keeps the challenges that were answered, so each works once.

ALTER TABLE pairing_requests
    ADD COLUMN source_net        text,
    ADD COLUMN proven_printer_id uuid REFERENCES printers (id) ON DELETE SET NULL;
CREATE INDEX pairing_requests_pending_net ON pairing_requests (source_net) WHERE state = 'pending';
CREATE INDEX pairing_requests_pending_serial ON pairing_requests (lower(serial)) WHERE state = 'pending';
CREATE INDEX pairing_requests_collected ON pairing_requests (collected_at) WHERE credentials_sealed IS NOT NULL;

CREATE TABLE pairing_guess_budget (
    id         smallint         PRIMARY KEY CHECK (id = 1),
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL
);

COMMENT ON TABLE printer_challenges IS
    'Renewal and re-pairing challenges that were answered (right or wrong): each works once.';
-- Challenges issued under the old scheme were stored when issued; they are no longer valid.
DELETE FROM printer_challenges;
