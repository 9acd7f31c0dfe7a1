-- Cookie sessions (issue 19, app/session/, docs/sessions.md): the backend-for-frontend keeps
-- every token on the server and gives the browser one HttpOnly cookie. Depends only on 0001
-- (the `bff_app` role).
--
-- Nothing secret is stored in clear: a cookie value only as its SHA-256, tokens and PKCE
-- verifiers only encrypted (Fernet, SESSION_ENCRYPTION_KEY, which the database never sees).

-- A sign-in in progress (GET /auth/login until GET /auth/callback): ten minutes, used once.
-- Keyed by the hash of the short-lived `__Host-bff_tx` cookie that binds it to one browser.
CREATE TABLE login_transactions (
    cookie_hash    bytea PRIMARY KEY CHECK (length(cookie_hash) = 32),
    state          text NOT NULL CHECK (length(state) BETWEEN 16 AND 128),
    nonce          text NOT NULL CHECK (length(nonce) BETWEEN 16 AND 128),
    code_verifier  bytea NOT NULL,
    return_to      text NOT NULL CHECK (length(return_to) BETWEEN 1 AND 2048),
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);
CREATE INDEX login_transactions_expiry_idx ON login_transactions (expires_at);

-- A signed-in browser. `sub`/`sid` come from the verified ID token (back-channel logout
-- ends sessions by either); `scope` is the audit scope of the access token (org or user).
CREATE TABLE browser_sessions (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    cookie_hash          bytea NOT NULL UNIQUE CHECK (length(cookie_hash) = 32),
    sub                  text NOT NULL CHECK (length(sub) BETWEEN 1 AND 255),
    sid                  text CHECK (length(sid) BETWEEN 1 AND 255),
    scope                text NOT NULL CHECK (length(scope) BETWEEN 1 AND 300),
    access_token         bytea NOT NULL,
    refresh_token        bytea,
    id_token             bytea NOT NULL,
    access_expires_at    timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    last_seen_at         timestamptz NOT NULL DEFAULT now(),
    refreshed_at         timestamptz,
    idle_expires_at      timestamptz NOT NULL,
    absolute_expires_at  timestamptz NOT NULL,
    CHECK (idle_expires_at <= absolute_expires_at)
);
CREATE INDEX browser_sessions_sub_idx ON browser_sessions (sub);
CREATE INDEX browser_sessions_sid_idx ON browser_sessions (sid) WHERE sid IS NOT NULL;
CREATE INDEX browser_sessions_idle_idx ON browser_sessions (idle_expires_at);

-- Back-channel logout tokens already accepted (`jti`), kept until a replay would be refused
-- for its age anyway.
CREATE TABLE logout_token_ids (
    jti         text PRIMARY KEY CHECK (length(jti) BETWEEN 1 AND 255),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX logout_token_ids_expiry_idx ON logout_token_ids (expires_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON browser_sessions TO bff_app;
GRANT SELECT, INSERT, DELETE ON login_transactions, logout_token_ids TO bff_app;
