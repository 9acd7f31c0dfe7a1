-- DPoP (RFC 9449, app/auth/dpop.py, docs/dpop.md). Depends on 0001 (the `bff_app` role) and
-- 0010 (`browser_sessions`).
--
-- The proofs every copy of the service has accepted, while a copy could still accept them
-- again (app/auth/replay.py): the key is SHA-256 of the proof key's thumbprint and the
-- proof's `jti`, so its size is fixed whatever a client sends. A row is written for every
-- DPoP request (in batches); no index on `expires_at`, which would cost every insert for
-- a purge that runs once a minute over a table only one time window deep.
CREATE TABLE dpop_proofs (
    key         bytea PRIMARY KEY CHECK (length(key) = 32),
    expires_at  timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON dpop_proofs TO bff_app;

-- SESSION_DPOP: the private key each cookie session's tokens are bound to, encrypted like
-- its tokens (Fernet, SESSION_ENCRYPTION_KEY); NULL for a session whose tokens are bearer.
ALTER TABLE browser_sessions ADD COLUMN dpop_key bytea;
