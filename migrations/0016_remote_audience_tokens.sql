-- Remote APIs (app/remote/, docs/remote-apis.md): a cookie session's access tokens for
-- APIs other than the service's own, one per session and audience, got from the tenant
-- with the session's refresh token (Auth0's multi-resource refresh tokens). Depends on
-- 0010 (`browser_sessions`).
--
-- Shared by every copy, so a token one copy got is used by all until it is due; a copy that
-- must get a new one locks the session's row first (as the session's own refresh does), so
-- ten racing requests over two copies send one grant. Tokens are stored only encrypted
-- (SESSION_ENCRYPTION_KEY, which the database never sees); they go with their session.
CREATE TABLE session_audience_tokens (
    session_id    uuid NOT NULL REFERENCES browser_sessions (id) ON DELETE CASCADE,
    audience      text NOT NULL CHECK (length(audience) BETWEEN 1 AND 600),
    access_token  bytea NOT NULL,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, audience)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON session_audience_tokens TO bff_app;
