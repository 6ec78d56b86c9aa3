-- The audit log (owned by the org service; written by every service through
-- printworks_common::audit). Append-only and hash-chained: one chain per organization,
-- and the global chain (chain_id = the nil uuid) for events of no organization.

CREATE TABLE audit_chains (
    chain_id   uuid PRIMARY KEY,
    last_index bigint NOT NULL,
    last_hash  bytea  NOT NULL
);

CREATE TABLE audit_events (
    id              uuid        PRIMARY KEY,
    chain_id        uuid        NOT NULL,
    chain_index     bigint      NOT NULL,
    occurred_at     timestamptz NOT NULL,
    organization_id uuid,
    actor_type      text        NOT NULL CHECK (actor_type IN ('user', 'client', 'printer', 'system', 'anonymous')),
    actor_id        text,
    source_addr     text,
    action          text        NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    target_type     text,
    target_id       text,
    -- The canonical JSON that was hashed: hash = sha256(prev_hash || record).
    record          text        NOT NULL,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    CONSTRAINT audit_events_chain_index_key UNIQUE (chain_id, chain_index)
);

CREATE INDEX audit_events_org_time ON audit_events (organization_id, occurred_at);
CREATE INDEX audit_events_actor ON audit_events (actor_type, actor_id, occurred_at);

-- Append-only: no UPDATE, no TRUNCATE, and DELETE only by the retention job, which sets
-- printworks.audit_retention = 'on' for its own transaction.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('printworks.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
