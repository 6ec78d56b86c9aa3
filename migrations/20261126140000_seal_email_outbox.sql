-- E-mail bodies carry invitation tokens: they are sealed with the master key while they
-- wait, and erased once sent (or given up on). The plain `body` column stays for rows
-- written before this change.
ALTER TABLE email_outbox
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN body_sealed bytea,
    ADD COLUMN gave_up_at  timestamptz;
DROP INDEX email_outbox_due;
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;
-- Messages already sent keep no body either.
UPDATE email_outbox SET body = NULL WHERE sent_at IS NOT NULL;
