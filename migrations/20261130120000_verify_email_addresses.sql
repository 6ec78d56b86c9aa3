-- Account service: e-mail addresses are verified (a link through the outbox). An
-- account may sign in before, but not create organizations, claim printers or register
-- clients. Accounts made before this change are taken as verified: they were made
-- under the old rules, and nothing about them is known to be wrong.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;
UPDATE users SET email_verified_at = created_at;

CREATE TABLE email_verifications (
    -- sha256 of the token in the link; the token itself is only in the e-mail.
    token_hash bytea       PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The address it verifies: a link for an address the account no longer has is void.
    email      text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX email_verifications_user ON email_verifications (user_id, created_at);

-- The e-mail outbox (now shared by every service that sends mail) names what a message
-- is about, so that it can be withdrawn while it waits: a revoked invitation's e-mail
-- is not sent.
ALTER TABLE email_outbox ADD COLUMN topic text;
CREATE INDEX email_outbox_topic ON email_outbox (topic) WHERE sent_at IS NULL AND gave_up_at IS NULL;
