-- The Management API budget every copy of the service shares, and the profiles it fetched
-- (app/auth0/budget.py, app/account/cached_profiles.py). Depends only on the `bff_app`
-- role of 0001.
--
-- Auth0 limits the Management API per tenant, whatever the number of our copies: each call
-- first takes a slot here. A row per budget keeps the times of its recent calls (at most
-- the budget's count of them); `auth0_budget_take` admits a call only while fewer than the
-- caller's limit of them lie in the window, under the row's lock, on the database's clock.
CREATE TABLE auth0_budget (
    name   text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 100),
    calls  timestamptz[] NOT NULL DEFAULT '{}'
);

-- 0 when the call is admitted (and recorded); else the seconds until it would be.
CREATE FUNCTION auth0_budget_take(
    p_name text, p_window_seconds float8, p_limit integer, p_keep integer
) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    held  timestamptz[];
    now_  timestamptz;
    recent timestamptz[];
    n     integer;
BEGIN
    INSERT INTO auth0_budget (name) VALUES (p_name) ON CONFLICT (name) DO NOTHING;
    SELECT calls INTO held FROM auth0_budget WHERE name = p_name FOR UPDATE;
    now_ := clock_timestamp();  -- after the lock: the order of admissions is the lock's
    SELECT coalesce(array_agg(c ORDER BY c), '{}') INTO recent
        FROM unnest(held) AS c
        WHERE c > now_ - make_interval(secs => p_window_seconds);
    n := cardinality(recent);
    IF n < p_limit THEN
        recent := recent || now_;
        UPDATE auth0_budget
            SET calls = recent[greatest(1, cardinality(recent) - p_keep + 1):]
            WHERE name = p_name;
        RETURN 0;
    END IF;
    RETURN greatest(
        extract(epoch FROM recent[n - p_limit + 1] + make_interval(secs => p_window_seconds)
                - now_),
        0.001);
END;
$$;

GRANT SELECT, INSERT, UPDATE ON auth0_budget TO bff_app;

-- The profile page's view of each user's Auth0 record: only the fields the service shows,
-- fetched at most once at a time for every copy (`refreshing_until` is the claim of whoever
-- is fetching it), served while fresh, and served stale while it is refetched or while the
-- budget is spent. Rows are purged once too old to serve.
CREATE TABLE auth0_profiles (
    user_id           text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 255),
    profile           jsonb,
    fetched_at        timestamptz,
    refreshing_until  timestamptz,
    CHECK ((profile IS NULL) = (fetched_at IS NULL))
);

CREATE INDEX auth0_profiles_fetched_idx ON auth0_profiles (fetched_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON auth0_profiles TO bff_app;
