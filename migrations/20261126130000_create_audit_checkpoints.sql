-- Signed checkpoints of the audit chains. Every few minutes the head of each chain that
-- grew (its index and hash) is recorded with an HMAC under a key derived from the master
-- key, which the database does not hold. Someone who can write to the database could
-- rewrite a chain and recompute every hash, but not sign its new heads: `verify` finds
-- the rewrite at the first checkpoint it passes. Retention prunes a chain only up to a
-- checkpoint old enough, which stays as the chain's signed start. Append-only like the
-- log itself.
CREATE TABLE audit_checkpoints (
    chain_id    uuid        NOT NULL,
    chain_index bigint      NOT NULL,
    hash        bytea       NOT NULL,
    signed_at   timestamptz NOT NULL,
    -- The chain's previous checkpoint (0: none), signed too: checkpoints form a chain,
    -- so one removed from the middle is noticed.
    prev_index  bigint      NOT NULL,
    mac         bytea       NOT NULL,
    PRIMARY KEY (chain_id, chain_index),
    -- One successor per checkpoint: of two replicas signing at once from the same
    -- checkpoint, the second one's row is not written (no fork in the chain).
    UNIQUE (chain_id, prev_index)
);

CREATE TRIGGER audit_checkpoints_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
