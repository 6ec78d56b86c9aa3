-- UltiMaker Cura, as it ships: a public client with a fixed id and a fixed loopback
-- redirect (cura/API/Account.py). It asks in UltiMaker's scope names, which the account
-- service reads as these Printworks scopes; its consent page is shown like any public
-- client's.
INSERT INTO oauth_clients (id, organization_id, name, client_type, secret_hash, redirect_uris,
                           scopes, grant_types, first_party, created_at)
VALUES ('um----------------------------ultimaker_cura', NULL, 'UltiMaker Cura', 'public', NULL,
        ARRAY['http://localhost:32118/callback'],
        ARRAY['openid', 'profile', 'email', 'offline_access', 'organization.read',
              'printer.read', 'print_job.read', 'print_job.write'],
        ARRAY['authorization_code', 'refresh_token'], false, '2026-12-01T03:00:00Z');

-- The PKCE method of a code: S256, or S512 (SHA-512 in Cura's own base64, for Cura's
-- client only).
ALTER TABLE oauth_codes
    ADD COLUMN code_challenge_method text NOT NULL DEFAULT 'S256'
        CHECK (code_challenge_method IN ('S256', 'S512'));
