-- The throttle of failed attempts now also counts wrong pairing codes (per person,
-- organization and source address): one table for every secret that can be guessed,
-- written only through printworks_common::throttle.
ALTER TABLE login_throttle RENAME TO attempt_throttle;
ALTER TABLE attempt_throttle RENAME CONSTRAINT login_throttle_pkey TO attempt_throttle_pkey;
