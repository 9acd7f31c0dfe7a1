-- The audit log's hash chain, its checkpoint watermark, and the indexes its queries use.
--
-- Chain: `audit_events_append` writes a batch of events for one scope. It takes the scope's
-- exclusive advisory lock before it takes seq numbers, and the lock is held until the
-- transaction ends, so within a scope seq order is chain order and commit order; writers in
-- other scopes do not wait (but for two scope names with the same 32-bit hash, which then
-- merely queue together). `audit_chain_heads` keeps each scope's last seq and hash.
-- The application hashes each event's own fields (its "content digest", app/audit_chain.py
-- defines the encoding); this function links them:
--     hash = sha256('bff-audit-link/v1:' || int8send(seq) || int8send(recorded_at in µs
--                   since the Unix epoch) || content digest || prev_hash, or nothing)
-- and app/audit_chain.py recomputes both to verify.
--
-- Watermark: seq numbers come from a sequence, so transactions in different scopes can
-- commit out of seq order. Before it takes seq numbers a writer holds a shared,
-- transaction-scoped advisory lock whose key carries a lower bound of those numbers. A
-- reader reads the sequence's last value, then the smallest key held (pg_locks): every seq
-- below both belongs to a finished transaction, so a later snapshot sees all of them that
-- committed. Checkpoint pullers are served only up to that watermark and never skip an event.

-- The watermark reads the sequence's last value: that is "the highest number handed out"
-- only while no session caches numbers ahead (the default, made explicit here).
ALTER SEQUENCE audit_events_seq CACHE 1;

CREATE TABLE audit_chain_heads (
    scope       text PRIMARY KEY,
    last_seq    bigint,
    last_hash   bytea CHECK (octet_length(last_hash) = 32),
    updated_at  timestamptz,
    CHECK ((last_seq IS NULL) = (last_hash IS NULL))
) WITH (fillfactor = 50);  -- room for HOT updates: every write updates its scope's row

-- Advisory-lock keys of in-flight writers: the top 16 bits say "audit seq" ('AU'), the low
-- 48 bits hold a seq that is at most any seq the writer takes. (Scope locks use the
-- two-integer key form, which pg_locks tells apart by objsubid = 2.)
CREATE FUNCTION audit_events_pending_key(seq bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (x'4155'::bigint << 48) | seq
$$;

-- Append one batch of events to a scope's chain, in array order.
-- The actor's fields are the same for the whole batch; the arrays hold one entry per event.
CREATE FUNCTION audit_events_append(
    p_scope text, p_actor text, p_client_id text, p_session_id text, p_token_id text,
    p_source_ip inet, p_user_agent text, p_request_id text,
    p_ids uuid[], p_occurred_at timestamptz[], p_actions text[], p_cruds text[],
    p_outcomes text[], p_reasons text[], p_entity_types text[], p_entity_ids text[],
    p_patient_ids uuid[], p_details jsonb[], p_contents bytea[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    how_many integer := cardinality(p_ids);
    prev bytea;
    recorded timestamptz;
    recorded_us bigint;
    seqs bigint[];
    prevs bytea[];
    hashes bytea[];
BEGIN
    IF how_many IS NULL OR how_many < 1 THEN
        RAISE EXCEPTION 'audit_events_append: no events';
    END IF;
    -- The scope's writers queue here; the next statement's snapshot sees the last one's
    -- commit. (Under REPEATABLE READ it may not; then the head UPDATE below fails with a
    -- serialization error, so the chain never forks.)
    PERFORM pg_advisory_xact_lock(x'41554448'::integer, hashtext(p_scope));
    SELECT h.last_hash INTO prev FROM audit_chain_heads h WHERE h.scope = p_scope;
    IF NOT FOUND THEN
        INSERT INTO audit_chain_heads (scope) VALUES (p_scope);
    END IF;
    -- One pending key per transaction is enough: the first is the smallest. The flag is
    -- transaction-local, and rolled back with a savepoint together with the lock.
    IF current_setting('bff.audit_pending', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_advisory_xact_lock_shared(audit_events_pending_key(
                    coalesce(pg_sequence_last_value('audit_events_seq'), 0) + 1)),
                set_config('bff.audit_pending', 'on', true);
    END IF;
    recorded := clock_timestamp();  -- after the lock: grows with seq within a scope
    recorded_us := (extract(epoch FROM recorded) * 1000000)::bigint;  -- exact (numeric)
    FOR i IN 1..how_many LOOP
        seqs[i] := nextval('audit_events_seq');
        prevs[i] := prev;
        prev := sha256('bff-audit-link/v1:'::bytea || int8send(seqs[i]) || int8send(recorded_us)
                       || p_contents[i] || coalesce(prev, ''::bytea));
        hashes[i] := prev;
    END LOOP;
    IF how_many = 1 THEN  -- the usual case; VALUES costs half what unnest does
        INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, client_id,
            session_id, token_id, source_ip, user_agent, action, crud, outcome, outcome_reason,
            entity_type, entity_id, patient_id, request_id, detail, prev_hash, hash)
        VALUES (seqs[1], p_ids[1], p_occurred_at[1], recorded, p_scope, p_actor, p_client_id,
            p_session_id, p_token_id, p_source_ip, p_user_agent, p_actions[1], p_cruds[1],
            p_outcomes[1], p_reasons[1], p_entity_types[1], p_entity_ids[1], p_patient_ids[1],
            p_request_id, p_details[1], prevs[1], hashes[1]);
    ELSE
        INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, client_id,
            session_id, token_id, source_ip, user_agent, action, crud, outcome, outcome_reason,
            entity_type, entity_id, patient_id, request_id, detail, prev_hash, hash)
        SELECT e.seq, e.id, e.occurred_at, recorded, p_scope, p_actor, p_client_id,
            p_session_id, p_token_id, p_source_ip, p_user_agent, e.action, e.crud, e.outcome,
            e.reason, e.entity_type, e.entity_id, e.patient_id, p_request_id, e.detail,
            e.prev_hash, e.hash
        FROM unnest(seqs, p_ids, p_occurred_at, p_actions, p_cruds, p_outcomes, p_reasons,
                    p_entity_types, p_entity_ids, p_patient_ids, p_details, prevs, hashes)
            AS e(seq, id, occurred_at, action, crud, outcome, reason, entity_type, entity_id,
                 patient_id, detail, prev_hash, hash);
    END IF;
    UPDATE audit_chain_heads SET last_seq = seqs[how_many], last_hash = prev, updated_at = recorded
    WHERE scope = p_scope;
END
$$;

-- One event (the usual case): the same, with plain parameters, which clients encode for
-- less than one-element arrays.
CREATE FUNCTION audit_events_append_one(
    p_scope text, p_actor text, p_client_id text, p_session_id text, p_token_id text,
    p_source_ip inet, p_user_agent text, p_request_id text,
    p_id uuid, p_occurred_at timestamptz, p_action text, p_crud text,
    p_outcome text, p_reason text, p_entity_type text, p_entity_id text,
    p_patient_id uuid, p_detail jsonb, p_content bytea
) RETURNS void
LANGUAGE sql AS $$
    SELECT audit_events_append(p_scope, p_actor, p_client_id, p_session_id, p_token_id,
        p_source_ip, p_user_agent, p_request_id, ARRAY[p_id], ARRAY[p_occurred_at],
        ARRAY[p_action], ARRAY[p_crud], ARRAY[p_outcome], ARRAY[p_reason],
        ARRAY[p_entity_type], ARRAY[p_entity_id], ARRAY[p_patient_id], ARRAY[p_detail],
        ARRAY[p_content])
$$;

-- The highest seq below which every event is final (committed or never to appear).
-- Call it in its own statement under READ COMMITTED, and read events in a later statement:
-- that statement's snapshot then sees every committed event up to the watermark.
CREATE FUNCTION audit_events_watermark() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    handed_out bigint;
    pending bigint;
BEGIN
    handed_out := coalesce(pg_sequence_last_value('audit_events_seq'), 0);
    SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO pending
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1
      AND (l.classid::bigint >> 16) = x'4155'::bigint
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
    RETURN least(handed_out, pending - 1);
END
$$;

-- Filtered pages: newest first within a scope, narrowed by the usual filters.
CREATE INDEX audit_events_scope_actor_time_idx
    ON audit_events (scope, actor, recorded_at DESC, seq DESC);
CREATE INDEX audit_events_scope_action_time_idx
    ON audit_events (scope, action, recorded_at DESC, seq DESC);
-- `action=patient.*`: the first segment of the action code.
CREATE INDEX audit_events_scope_family_time_idx
    ON audit_events (scope, split_part(action, '.', 1), recorded_at DESC, seq DESC);
-- Denials and failures are rare and searched for.
CREATE INDEX audit_events_scope_outcome_time_idx
    ON audit_events (scope, outcome, recorded_at DESC, seq DESC) WHERE outcome <> 'success';

GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO bff_app;
