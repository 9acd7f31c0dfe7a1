-- Account: shared rate-limit buckets, revoked tokens and sessions, ingested Auth0 log ids,
-- and an index for a user's sign-in history. Depends only on 0001 (audit_events, bff_app).
--
-- Every copy of the service shares these tables, so a limit, a sign-out or an ingested log
-- counts everywhere at once. Rows here expire; the service purges them (see app/account.py,
-- app/revocation.py, app/logstream.py).

-- Rate limits as a generic cell rate algorithm: one row per bucket holds its "theoretical
-- arrival time" (tat). A hit is allowed while max(tat, now) + emission <= now + period,
-- i.e. `period / emission` hits in a burst, refilled one per `emission`. A row whose tat
-- has passed is equivalent to no row and is purged.
CREATE TABLE rate_limits (
    bucket    text PRIMARY KEY CHECK (length(bucket) BETWEEN 1 AND 200),
    tat       timestamptz NOT NULL,
    emission  interval NOT NULL CHECK (emission > interval '0'),
    period    interval NOT NULL CHECK (period >= emission),
    allowed   boolean NOT NULL
);
CREATE INDEX rate_limits_tat_idx ON rate_limits (tat);

-- Revoked access tokens (by `jti`, or by a digest of the token when it has none) and
-- sessions (`sid`), each until the last moment a token it covers could still verify.
-- Keyed by the user as well, so one user's sign-out can never touch another's tokens.
CREATE TABLE revocations (
    kind        text NOT NULL CHECK (kind IN ('jti', 'token', 'sid')),
    sub         text NOT NULL CHECK (length(sub) BETWEEN 1 AND 255),
    value       text NOT NULL CHECK (length(value) BETWEEN 1 AND 255),
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (kind, sub, value)
);
CREATE INDEX revocations_expires_idx ON revocations (expires_at);

-- Auth0 Log Streams deliver at least once and unordered: a log id is ingested once.
CREATE TABLE auth0_log_ids (
    log_id       text PRIMARY KEY CHECK (length(log_id) BETWEEN 1 AND 128),
    ingested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX auth0_log_ids_ingested_idx ON auth0_log_ids (ingested_at);

-- GET /api/me/logins reads one user's sign-in events across scopes, newest first. Partial,
-- so the rest of the audit log pays nothing for it. Events ingested from Auth0's logs are
-- `idp.*` (action codes are [a-z_] segments, so "auth0" cannot be one).
CREATE INDEX audit_events_sign_in_history_idx
    ON audit_events (actor, occurred_at DESC, seq DESC)
    WHERE actor IS NOT NULL
      AND (action IN ('user.signed_in', 'user.signed_out') OR action LIKE 'idp.%');

GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits, revocations TO bff_app;
GRANT SELECT, INSERT, DELETE ON auth0_log_ids TO bff_app;
