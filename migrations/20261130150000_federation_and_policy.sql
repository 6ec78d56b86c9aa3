-- Federated sign-in per organization (OpenID Connect) and the organization's security
-- policy.

-- Org service: the organization's identity provider. The client secret is sealed under
-- the master key (context `sso-client-secret:<organization id>`), never returned.
CREATE TABLE org_identity_providers (
    organization_id      uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    issuer               text        NOT NULL CHECK (length(issuer) BETWEEN 8 AND 500),
    client_id            text        NOT NULL CHECK (length(client_id) BETWEEN 1 AND 255),
    client_secret_sealed bytea       NOT NULL,
    default_role         text        NOT NULL CHECK (default_role IN ('member', 'guest')),
    -- Members whose address is in a verified domain may not sign in with a password.
    enforced             boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- The e-mail domains the provider vouches for. A domain counts only once proven by a
-- DNS TXT record holding `challenge`; several organizations may claim one, one proves it.
CREATE TABLE org_sso_domains (
    organization_id uuid        NOT NULL REFERENCES org_identity_providers (organization_id) ON DELETE CASCADE,
    domain          text        NOT NULL CHECK (length(domain) BETWEEN 3 AND 253 AND domain = lower(domain)),
    challenge       text        NOT NULL,
    created_at      timestamptz NOT NULL,
    verified_at     timestamptz,
    PRIMARY KEY (organization_id, domain)
);
CREATE UNIQUE INDEX org_sso_domains_proven ON org_sso_domains (domain) WHERE verified_at IS NOT NULL;

-- The rules members must meet to act in the organization, read on every call.
CREATE TABLE org_policies (
    organization_id      uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    require_mfa          boolean     NOT NULL,
    -- Seconds since sign-in after which a session may no longer act here; NULL: no limit.
    max_session_age_secs integer     CHECK (max_session_age_secs BETWEEN 300 AND 31536000),
    allowed_auth         text        NOT NULL CHECK (allowed_auth IN ('password', 'federation', 'both')),
    notice               text        CHECK (length(notice) BETWEEN 1 AND 2000),
    updated_at           timestamptz NOT NULL
);

-- Account service: a person as an organization's provider knows them, matched by
-- (organization, issuer, sub): two organizations may use one multi-tenant issuer.
CREATE TABLE federated_identities (
    issuer          text        NOT NULL,
    subject         text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 255),
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL,
    last_login_at   timestamptz NOT NULL,
    PRIMARY KEY (organization_id, issuer, subject)
);
CREATE INDEX federated_identities_user ON federated_identities (user_id);

-- A sign-in sent to a provider and not back yet: `state` (its SHA-256 is the key), the
-- nonce, the PKCE verifier (sealed) and the browser it was started in (the SHA-256 of a
-- cookie's secret). Taken once by the callback.
CREATE TABLE federated_logins (
    state_hash           bytea       PRIMARY KEY,
    browser_hash         bytea       NOT NULL,
    organization_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    issuer               text        NOT NULL,
    nonce                text        NOT NULL,
    pkce_verifier_sealed bytea       NOT NULL,
    return_to            text,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL
);
CREATE INDEX federated_logins_expiry ON federated_logins (expires_at);

-- A session that came from an organization's provider names it; it ends at the
-- federated maximum, and its refresh tokens with it.
ALTER TABLE sessions ADD COLUMN federated_org uuid REFERENCES organizations (id) ON DELETE CASCADE;
