-- Account service: people, their browser sessions, TOTP, and the per-account throttle.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Normalised (trimmed, NFC, lower case) by the application; unique regardless of
    -- case by the index below, whatever the application does.
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    display_name  text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE sessions (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- sha256 of the cookie's secret; the secret itself is never stored.
    token_hash   bytea       NOT NULL,
    -- How the person authenticated: {pwd} or {pwd,otp}.
    amr          text[]      NOT NULL,
    user_agent   text,
    source_addr  text,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    ended_reason text,
    CONSTRAINT sessions_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE ended_at IS NULL;

-- Growing waits between failed attempts, per account (keyed by the normalised e-mail
-- address, whether or not such an account exists, so that unknown and known accounts
-- behave alike). Every attempt is counted before it is checked.
CREATE TABLE login_throttle (
    subject         text        PRIMARY KEY,
    failures        integer     NOT NULL,
    next_allowed_at timestamptz NOT NULL
);

CREATE TABLE totp_credentials (
    user_id        uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The base32 secret, sealed with the master key (context "totp:<user id>").
    secret_sealed  bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    -- NULL while enrolment awaits its first correct code.
    confirmed_at   timestamptz,
    -- The last accepted time step: a code is accepted once.
    last_used_step bigint
);

CREATE TABLE recovery_codes (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea       NOT NULL,
    created_at timestamptz NOT NULL,
    used_at    timestamptz,
    CONSTRAINT recovery_codes_code_hash_key UNIQUE (user_id, code_hash)
);

-- A login page that has checked the password and waits for the TOTP code; a few
-- guesses per challenge, counted before each check.
CREATE TABLE mfa_challenges (
    token_hash bytea       PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    return_to  text,
    attempts   integer     NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
