-- Org service: invitations (and the e-mail outbox that carries them), teams, projects
-- and their shares, printers with their shares and security settings, and what the
-- audit log's retention needs.

CREATE TABLE invitations (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email           text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('admin', 'member', 'guest')),
    -- sha256 of the token; the token itself is shown once and e-mailed.
    token_hash      bytea       NOT NULL,
    invited_by      uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    accepted_at     timestamptz,
    accepted_by     uuid        REFERENCES users (id) ON DELETE SET NULL,
    revoked_at      timestamptz,
    CONSTRAINT invitations_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX invitations_org ON invitations (organization_id, created_at);

-- E-mail waits here, written in the transaction of what it announces, until a worker
-- has handed it to the sender: nothing is lost when the sender is down.
CREATE TABLE email_outbox (
    id              uuid        PRIMARY KEY,
    to_address      text        NOT NULL,
    subject         text        NOT NULL,
    body            text        NOT NULL,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    sent_at         timestamptz,
    last_error      text
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE sent_at IS NULL;

CREATE TABLE teams (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_by      uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL
);
CREATE UNIQUE INDEX teams_name_key ON teams (organization_id, lower(name));

CREATE TABLE team_members (
    team_id  uuid        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id  uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at timestamptz NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE projects (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    description     text        NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    owner_id        uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX projects_org ON projects (organization_id, created_at);

CREATE TABLE project_shares (
    project_id   uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    grantee_type text        NOT NULL CHECK (grantee_type IN ('user', 'team')),
    grantee_id   uuid        NOT NULL,
    permission   text        NOT NULL CHECK (permission IN ('view', 'edit')),
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (project_id, grantee_type, grantee_id)
);

-- A printer belongs to one organization. Rows are created when a printer is claimed
-- (pairing) and kept, marked unpaired, when it leaves.
CREATE TABLE printers (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    model           text,
    serial          text,
    claimed_by      uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL,
    unpaired_at     timestamptz
);
CREATE INDEX printers_org ON printers (organization_id, created_at) WHERE unpaired_at IS NULL;

CREATE TABLE printer_shares (
    printer_id   uuid        NOT NULL REFERENCES printers (id) ON DELETE CASCADE,
    grantee_type text        NOT NULL CHECK (grantee_type IN ('user', 'team')),
    grantee_id   uuid        NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (printer_id, grantee_type, grantee_id)
);

-- Versioned, so that the relay can push a change to the printer and record which
-- version the printer confirmed.
CREATE TABLE printer_security (
    printer_id        uuid        PRIMARY KEY REFERENCES printers (id) ON DELETE CASCADE,
    firewall_enabled  boolean     NOT NULL,
    -- Argon2id PHC string of the six-digit settings PIN; NULL: no PIN.
    pin_hash          text,
    version           bigint      NOT NULL,
    updated_by        uuid        REFERENCES users (id) ON DELETE SET NULL,
    updated_at        timestamptz NOT NULL,
    confirmed_version bigint,
    confirmed_at      timestamptz
);

-- Retention prunes the oldest records of a chain and keeps here the last pruned
-- record's index and hash, from which verification continues.
ALTER TABLE audit_chains
    ADD COLUMN pruned_through_index bigint NOT NULL DEFAULT 0,
    ADD COLUMN pruned_through_hash  bytea;
