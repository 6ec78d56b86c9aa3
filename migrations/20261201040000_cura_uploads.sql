-- Relay: files UltiMaker Cura uploads before it says which printer prints them
-- (PUT /cura/v1/jobs/upload, then the pre-signed upload_url, then
-- POST /connect/v1/clusters/{cluster}/print/{job_id}). Sealed like jobs; the URL's token
-- kept as its SHA-256, good once for ten minutes; the file printable for a day.
CREATE TABLE cura_uploads (
    id                uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    job_name          text        NOT NULL CHECK (length(job_name) BETWEEN 1 AND 200),
    content_type      text        NOT NULL CHECK (content_type IN ('text/x-gcode', 'application/x-ufp')),
    declared_size     bigint      NOT NULL CHECK (declared_size >= 0),
    upload_token_hash bytea       NOT NULL UNIQUE CHECK (length(upload_token_hash) = 32),
    blob_key          text        NOT NULL,
    key_sealed        bytea       NOT NULL,
    size              bigint      CHECK (size >= 0),
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    uploading_since   timestamptz,
    uploaded_at       timestamptz
);
CREATE INDEX cura_uploads_user ON cura_uploads (user_id, expires_at);
CREATE INDEX cura_uploads_expiry ON cura_uploads (expires_at);
