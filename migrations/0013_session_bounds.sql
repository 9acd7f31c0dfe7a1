-- Bounds on what browsers can make the service keep (docs/sessions.md, "Bounds"). Depends on
-- 0010.
--
-- A sign-in in progress records the client address it came from (an IPv4 address or an
-- IPv6 /64, as the per-address rate limit counts them), so that one address keeps at most
-- SESSION_MAX_PENDING_PER_ADDRESS of them; rows from before this migration have none and
-- count only towards the total, SESSION_MAX_PENDING. Both evict the oldest first, which
-- these indexes find without reading the rows.
ALTER TABLE login_transactions ADD COLUMN address text CHECK (length(address) BETWEEN 1 AND 64);
CREATE INDEX login_transactions_address_idx ON login_transactions (address, created_at)
    WHERE address IS NOT NULL;
CREATE INDEX login_transactions_created_idx ON login_transactions (created_at);

-- A user's sessions, newest first, to end the oldest past SESSION_MAX_PER_USER.
CREATE INDEX browser_sessions_sub_created_idx ON browser_sessions (sub, created_at);
DROP INDEX browser_sessions_sub_idx;
