-- Token sessions already seen by GET /api/me, so that `user.signed_in` is recorded once per
-- session (Auth0 `sid`, else the token id), not per request, even under concurrent requests.
CREATE TABLE sign_in_sessions (
    session_key    text PRIMARY KEY CHECK (length(session_key) <= 300),
    auth0_user_id  text NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);
CREATE INDEX sign_in_sessions_expiry_idx ON sign_in_sessions (expires_at);

GRANT SELECT, INSERT, DELETE ON sign_in_sessions TO bff_app;
-- Registrations are never deleted by the service.
REVOKE DELETE ON registrations FROM bff_app;
