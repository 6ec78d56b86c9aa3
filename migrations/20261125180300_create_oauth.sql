-- Account service: the OAuth2 / OpenID Connect provider.

-- Token signing keys. A key is published (in the JWKS, and to every verifier) from
-- published_from, signs from signs_from (later, after a rotation, so that caches have
-- it before tokens do), and is published until its last tokens have expired.
CREATE TABLE signing_keys (
    kid                text        PRIMARY KEY,
    alg                text        NOT NULL CHECK (alg = 'EdDSA'),
    -- PKCS#8, sealed with the master key (context "signing-key:<kid>").
    private_key_sealed bytea       NOT NULL,
    public_jwk         jsonb       NOT NULL,
    created_at         timestamptz NOT NULL,
    published_from     timestamptz NOT NULL,
    signs_from         timestamptz NOT NULL,
    published_until    timestamptz,
    CHECK (signs_from >= published_from)
);

CREATE TABLE oauth_clients (
    id              text        PRIMARY KEY,
    -- NULL only for first-party clients shipped with Printworks.
    organization_id uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    client_type     text        NOT NULL CHECK (client_type IN ('public', 'confidential')),
    -- sha256 of the secret of a confidential client (a 256-bit random string).
    secret_hash     bytea,
    redirect_uris   text[]      NOT NULL,
    scopes          text[]      NOT NULL,
    grant_types     text[]      NOT NULL,
    -- The role a client_credentials client holds in its organization.
    role            text        CHECK (role IN ('admin', 'member', 'guest')),
    first_party     boolean     NOT NULL DEFAULT false,
    created_by      uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    CHECK ((client_type = 'confidential') = (secret_hash IS NOT NULL))
);

CREATE TABLE oauth_codes (
    code_hash       bytea       PRIMARY KEY,
    client_id       text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id      uuid        REFERENCES sessions (id) ON DELETE CASCADE,
    redirect_uri    text        NOT NULL,
    scopes          text[]      NOT NULL,
    code_challenge  text,
    nonce           text,
    auth_time       timestamptz NOT NULL,
    amr             text[]      NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    consumed_at     timestamptz,
    -- The refresh token family issued from this code, revoked if the code is replayed.
    family_id       uuid
);

CREATE TABLE oauth_refresh_tokens (
    id          uuid        PRIMARY KEY,
    token_hash  bytea       NOT NULL,
    family_id   uuid        NOT NULL,
    client_id   text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id  uuid        REFERENCES sessions (id) ON DELETE CASCADE,
    scopes      text[]      NOT NULL,
    auth_time   timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- Set when this token was exchanged for its successor; presenting it again is reuse.
    rotated_at  timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT oauth_refresh_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family_id);
CREATE INDEX oauth_refresh_tokens_session ON oauth_refresh_tokens (session_id) WHERE revoked_at IS NULL;
CREATE INDEX oauth_refresh_tokens_user_client ON oauth_refresh_tokens (user_id, client_id) WHERE revoked_at IS NULL;

CREATE TABLE oauth_consents (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scopes     text[]      NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- The first-party command-line client: public, PKCE, loopback redirects (RFC 8252),
-- no consent screen.
INSERT INTO oauth_clients (id, organization_id, name, client_type, secret_hash, redirect_uris,
                           scopes, grant_types, first_party, created_at)
VALUES ('printworks-cli', NULL, 'Printworks CLI', 'public', NULL,
        ARRAY['http://127.0.0.1/callback', 'http://[::1]/callback'],
        ARRAY['openid', 'profile', 'email', 'offline_access', 'organization.read',
              'organization.write', 'printer.read', 'printer.write', 'print_job.read',
              'print_job.write', 'audit.read'],
        ARRAY['authorization_code', 'refresh_token'], true, '2026-11-25T18:03:00Z');
