-- Request counters for the per-IP and per-user limits (app/ratelimit.py). Depends only on
-- the `bff_app` role of 0001.
--
-- Each copy of the service counts requests in memory and, every half second, adds its new
-- counts here and reads back every copy's totals in one statement. One row per key (e.g.
-- "ip:203.0.113.7", "user:auth0|123") per fixed window; `expires_at` is when the window can
-- no longer be read as "the previous window", after which the service purges the row.
--
-- UNLOGGED: counters that live two minutes are not worth their WAL. After a crash of the
-- server the table comes back empty, which only hands every key a fresh budget.
-- fillfactor leaves room on each page, so the constant count updates stay HOT (no index
-- changes: `count` is not indexed).
CREATE UNLOGGED TABLE rate_counters (
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    window_start  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    count         bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (key, window_start)
) WITH (fillfactor = 70);

CREATE INDEX rate_counters_expires_idx ON rate_counters (expires_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON rate_counters TO bff_app;
