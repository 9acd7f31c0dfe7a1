-- An audit log that no one can rewrite unnoticed (issue 16); docs/audit.md has the threat
-- model and what each check below catches.
--
-- 1. Only the append functions write. Until now the application role could INSERT events
--    and UPDATE chain heads itself: with the scope's lock it could append an event with any
--    `recorded_at` and a hash computed as app/audit/chain.py does, and the chain verified.
--    Now the append functions run with their owner's rights (SECURITY DEFINER, owned by the
--    migrations owner, search_path pinned so that no object of the caller's can stand in
--    for one of theirs), set `seq` and `recorded_at` themselves, and are the only way in:
--    the application role keeps SELECT on the audit tables and EXECUTE on the functions,
--    and loses INSERT, UPDATE, DELETE, TRUNCATE (and REFERENCES, TRIGGER) on all of them.
-- 2. `recorded_at` never goes backwards within a scope, even when the clock steps back:
--    an append records at the later of the clock and the scope's last recording, so the
--    verifier can refuse any event recorded before the one ahead of it (a backdated forgery).
-- 3. Signed digests (app/audit/digests.py): every few minutes the service signs, with an
--    Ed25519 key the database never sees, the chain heads that changed since the previous
--    digest, and stores the compact JWS here. Digests and the public keys that signed them
--    are append-only like the log, written by `audit_digests_append` only.
--
-- Existing events, heads and links are kept as they are: nothing here rewrites a row.

-- --- 1. Privileges ----------------------------------------------------------------------------

REVOKE ALL ON audit_events, audit_chain_heads, audit_event_patients FROM bff_app, PUBLIC;
GRANT SELECT ON audit_events, audit_chain_heads, audit_event_patients TO bff_app;
-- The watermark reads the sequence's last value (SELECT); nextval and setval stay the owner's.
REVOKE ALL ON SEQUENCE audit_events_seq FROM bff_app, PUBLIC;
GRANT SELECT ON SEQUENCE audit_events_seq TO bff_app;

-- Partitions carry privileges of their own: none for the application, now and later.
CREATE OR REPLACE FUNCTION audit_events_protect_partition(partition regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()', partition);
    EXECUTE format('REVOKE ALL ON %s FROM bff_app, PUBLIC', partition);
END
$$;

DO $$
DECLARE
    partition regclass;
BEGIN
    FOR partition IN
        SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'audit_events'::regclass
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM bff_app, PUBLIC', partition);
    END LOOP;
END
$$;

-- --- 2. The append functions, with the owner's rights -----------------------------------------
-- As in 0008, but for `recorded` (the later of the clock and the scope's last recording),
-- and a single event's patient link written without the unnest, or skipped when it names
-- no patient: that pays for the owner's rights and the pinned search_path (about 5 µs a
-- call), so that the append path costs no more than before (docs/audit.md, measured).

CREATE OR REPLACE FUNCTION audit_events_append(
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
    last_recorded timestamptz;
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
    SELECT h.last_hash, h.updated_at INTO prev, last_recorded
    FROM audit_chain_heads h WHERE h.scope = p_scope;
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
    -- After the lock, and never before the scope's last recording: grows with seq.
    recorded := greatest(clock_timestamp(), last_recorded);
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
        -- Its patient link, if it names any, without the unnest (an event that names no
        -- patient, the commonest single event, skips the lookup altogether).
        IF p_patient_ids[1] IS NOT NULL OR p_details[1] ? 'patient_ids' THEN
            INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)
            SELECT seqs[1], recorded, l.ids
            FROM (SELECT ARRAY(SELECT audit_event_patient_ids(p_patient_ids[1], p_details[1]))
                  AS ids) AS l
            WHERE cardinality(l.ids) > 0;
        END IF;
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
        INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)
        SELECT l.seq, recorded, l.ids
        FROM unnest(seqs, p_patient_ids, p_details) AS e(seq, patient_id, detail),
            LATERAL (SELECT e.seq, ARRAY(SELECT audit_event_patient_ids(e.patient_id, e.detail))
                     AS ids) AS l
        WHERE cardinality(l.ids) > 0;
    END IF;
    UPDATE audit_chain_heads SET last_seq = seqs[how_many], last_hash = prev, updated_at = recorded
    WHERE scope = p_scope;
END
$$;

-- One event: as in 0002, but in PL/pgSQL, whose plan is kept for the session. With the
-- owner's rights a SQL function is no longer inlined into the caller's statement, and would
-- be parsed and planned again on every call.
CREATE OR REPLACE FUNCTION audit_events_append_one(
    p_scope text, p_actor text, p_client_id text, p_session_id text, p_token_id text,
    p_source_ip inet, p_user_agent text, p_request_id text,
    p_id uuid, p_occurred_at timestamptz, p_action text, p_crud text,
    p_outcome text, p_reason text, p_entity_type text, p_entity_id text,
    p_patient_id uuid, p_detail jsonb, p_content bytea
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM audit_events_append(p_scope, p_actor, p_client_id, p_session_id, p_token_id,
        p_source_ip, p_user_agent, p_request_id, ARRAY[p_id], ARRAY[p_occurred_at],
        ARRAY[p_action], ARRAY[p_crud], ARRAY[p_outcome], ARRAY[p_reason],
        ARRAY[p_entity_type], ARRAY[p_entity_id], ARRAY[p_patient_id], ARRAY[p_detail],
        ARRAY[p_content]);
END
$$;

CREATE OR REPLACE FUNCTION audit_events_append_batch(
    p_scopes text[], p_actors text[], p_client_ids text[], p_session_ids text[],
    p_token_ids text[], p_source_ips inet[], p_user_agents text[], p_request_ids text[],
    p_groups integer[],
    p_ids uuid[], p_occurred_at timestamptz[], p_actions text[], p_cruds text[],
    p_outcomes text[], p_reasons text[], p_entity_types text[], p_entity_ids text[],
    p_patient_ids uuid[], p_details jsonb[], p_contents bytea[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    how_many integer := cardinality(p_ids);
    requests integer := cardinality(p_scopes);
    lock_key integer;
    head_scopes text[] := '{}';   -- one slot per distinct scope
    head_hashes bytea[] := '{}';
    head_seqs bigint[] := '{}';
    last_recorded timestamptz;    -- the latest recording among the batch's scopes
    slot_of integer[];            -- per request: its scope's slot
    slot integer;
    i integer := 0;
    content bytea;
    seq bigint;
    recorded timestamptz;
    recorded_us bigint;
    seqs bigint[];
    prevs bytea[];
    hashes bytea[];
BEGIN
    IF how_many IS NULL OR how_many < 1 OR requests IS NULL OR requests < 1 THEN
        RAISE EXCEPTION 'audit_events_append_batch: no events';
    END IF;
    IF cardinality(p_groups) <> how_many OR cardinality(p_contents) <> how_many
       OR cardinality(p_request_ids) <> requests THEN
        RAISE EXCEPTION 'audit_events_append_batch: array lengths differ';
    END IF;
    -- Each distinct lock key once, in key order; a scope's head is read after its lock, so
    -- the read sees the last holder's commit (READ COMMITTED: a snapshot per statement).
    FOR lock_key IN SELECT DISTINCT hashtext(s) FROM unnest(p_scopes) AS s ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(x'41554448'::integer, lock_key);
    END LOOP;
    SELECT array_agg(s ORDER BY s), array_agg(h.last_hash ORDER BY s),
           array_agg(h.last_seq ORDER BY s), max(h.updated_at)
    INTO head_scopes, head_hashes, head_seqs, last_recorded
    FROM (SELECT DISTINCT unnest(p_scopes) AS s) AS d
    LEFT JOIN audit_chain_heads h ON h.scope = d.s;
    slot_of := array_fill(0, ARRAY[requests]);
    FOR r IN 1..requests LOOP
        slot_of[r] := array_position(head_scopes, p_scopes[r]);
    END LOOP;
    IF current_setting('bff.audit_pending', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_advisory_xact_lock_shared(audit_events_pending_key(
                    coalesce(pg_sequence_last_value('audit_events_seq'), 0) + 1)),
                set_config('bff.audit_pending', 'on', true);
    END IF;
    -- After the locks, and never before any of the scopes' last recordings.
    recorded := greatest(clock_timestamp(), last_recorded);
    recorded_us := (extract(epoch FROM recorded) * 1000000)::bigint;
    FOREACH content IN ARRAY p_contents LOOP  -- in order: FOREACH does not re-walk the array
        i := i + 1;
        slot := slot_of[p_groups[i]];
        IF slot IS NULL THEN
            RAISE EXCEPTION 'audit_events_append_batch: event % names no request', i;
        END IF;
        seq := nextval('audit_events_seq');
        seqs[i] := seq;
        prevs[i] := head_hashes[slot];
        head_hashes[slot] := sha256('bff-audit-link/v1:'::bytea || int8send(seq)
                                    || int8send(recorded_us) || content
                                    || coalesce(head_hashes[slot], ''::bytea));
        head_seqs[slot] := seq;
        hashes[i] := head_hashes[slot];
    END LOOP;
    INSERT INTO audit_events (seq, id, occurred_at, recorded_at, scope, actor, client_id,
        session_id, token_id, source_ip, user_agent, action, crud, outcome, outcome_reason,
        entity_type, entity_id, patient_id, request_id, detail, prev_hash, hash)
    SELECT e.seq, e.id, e.occurred_at, recorded, p_scopes[e.g], p_actors[e.g],
        p_client_ids[e.g], p_session_ids[e.g], p_token_ids[e.g], p_source_ips[e.g],
        p_user_agents[e.g], e.action, e.crud, e.outcome, e.reason, e.entity_type, e.entity_id,
        e.patient_id, p_request_ids[e.g], e.detail, e.prev_hash, e.hash
    FROM unnest(seqs, p_groups, p_ids, p_occurred_at, p_actions, p_cruds, p_outcomes,
                p_reasons, p_entity_types, p_entity_ids, p_patient_ids, p_details, prevs,
                hashes)
        AS e(seq, g, id, occurred_at, action, crud, outcome, reason, entity_type, entity_id,
             patient_id, detail, prev_hash, hash);
    INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)
    SELECT l.seq, recorded, l.ids
    FROM unnest(seqs, p_patient_ids, p_details) AS e(seq, patient_id, detail),
        LATERAL (SELECT e.seq, ARRAY(SELECT audit_event_patient_ids(e.patient_id, e.detail))
                 AS ids) AS l
    WHERE cardinality(l.ids) > 0;
    INSERT INTO audit_chain_heads AS h (scope, last_seq, last_hash, updated_at)
    SELECT s.scope, s.last_seq, s.last_hash, recorded
    FROM unnest(head_scopes, head_seqs, head_hashes) AS s(scope, last_seq, last_hash)
    ON CONFLICT (scope) DO UPDATE
        SET last_seq = excluded.last_seq, last_hash = excluded.last_hash,
            updated_at = excluded.updated_at;
END
$$;

-- --- 3. Signed digests -------------------------------------------------------------------------

-- Append-only tables other than the log name themselves when they refuse a change.
CREATE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The public half of every key that signed a digest, kept as long as the digests are, so
-- the JWKS (GET /.well-known/audit-keys) still holds a key after it is retired.
CREATE TABLE audit_signing_keys (
    kid              text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9._-]{1,64}$'),
    public_jwk       jsonb NOT NULL CHECK (
        public_jwk ->> 'kty' = 'OKP' AND public_jwk ->> 'crv' = 'Ed25519'
        AND public_jwk ? 'x' AND NOT public_jwk ? 'd'),
    first_signed_at  timestamptz NOT NULL
);

-- One row per digest. `jws` is what was signed and is the only authority; the other columns
-- are read out of it by `audit_digests_append` for queries. `hash` is SHA-256 of the JWS
-- text, and the next digest's payload names it (`prev_hash`): the digests form a chain.
CREATE TABLE audit_digests (
    number     bigint PRIMARY KEY CHECK (number >= 1),
    issued_at  timestamptz NOT NULL,
    kid        text NOT NULL REFERENCES audit_signing_keys (kid),
    after_seq  bigint NOT NULL CHECK (after_seq >= 0),
    watermark  bigint NOT NULL CHECK (watermark >= after_seq),
    heads      integer NOT NULL CHECK (heads >= 0),
    prev_hash  bytea CHECK (octet_length(prev_hash) = 32),
    hash       bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    jws        text NOT NULL,
    CHECK ((number = 1) = (prev_hash IS NULL))
);
-- GET /api/audit-events/digests?since=&until=, oldest first; the JWKS's "signed a digest".
CREATE INDEX audit_digests_issued_idx ON audit_digests (issued_at, number);
CREATE INDEX audit_digests_kid_idx ON audit_digests (kid);

CREATE TRIGGER audit_signing_keys_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_signing_keys
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_signing_keys_no_truncate
    BEFORE TRUNCATE ON audit_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_digests_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_digests
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_digests_no_truncate
    BEFORE TRUNCATE ON audit_digests
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

REVOKE ALL ON audit_signing_keys, audit_digests FROM bff_app, PUBLIC;
GRANT SELECT ON audit_signing_keys, audit_digests TO bff_app;

-- A base64url segment of a compact JWS as JSON (NULL when it is not).
CREATE FUNCTION audit_jws_segment(segment text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN convert_from(decode(translate(segment, '-_', '+/')
                               || repeat('=', (4 - length(segment) % 4) % 4), 'base64'),
                        'UTF8')::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

-- Store one digest. The database cannot check an Ed25519 signature; it checks that the
-- digest continues the chain: the next number, the last digest's hash, issued now (within
-- this transaction) and after the last one, covering the seqs from the last watermark to
-- one already handed out; and that its `kid` always names the same public key.
-- Serialised by the digest lock (two-integer key 'AUDG', 0), which the service also takes
-- before it reads the last digest, so that copies of the service never race.
CREATE FUNCTION audit_digests_append(p_jws text, p_public_jwk jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    parts text[] := string_to_array(p_jws, '.');
    header jsonb;
    payload jsonb;
    last audit_digests%ROWTYPE;
    d_number bigint;
    d_issued timestamptz;
    d_prev bytea;
    d_after bigint;
    d_watermark bigint;
    d_kid text;
BEGIN
    IF cardinality(parts) <> 3 THEN
        RAISE EXCEPTION 'audit_digests_append: not a compact JWS'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    header := audit_jws_segment(parts[1]);
    payload := audit_jws_segment(parts[2]);
    IF header IS NULL OR payload IS NULL OR header ->> 'alg' IS DISTINCT FROM 'EdDSA'
       OR jsonb_typeof(payload -> 'heads') IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'audit_digests_append: not an EdDSA audit digest'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    d_kid := header ->> 'kid';
    d_number := (payload ->> 'number')::bigint;
    d_issued := (payload ->> 'issued_at')::timestamptz;
    d_prev := decode(payload ->> 'prev_hash', 'hex');
    d_after := (payload ->> 'after_seq')::bigint;
    d_watermark := (payload ->> 'watermark')::bigint;
    IF p_public_jwk ->> 'kid' IS DISTINCT FROM d_kid THEN
        RAISE EXCEPTION 'audit_digests_append: the key is not the one the header names'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(x'41554447'::integer, 0);
    SELECT * INTO last FROM audit_digests ORDER BY number DESC LIMIT 1;
    IF d_number IS DISTINCT FROM coalesce(last.number, 0) + 1
       OR d_prev IS DISTINCT FROM last.hash
       OR d_after IS DISTINCT FROM coalesce(last.watermark, 0)
       OR d_watermark IS NULL OR d_watermark < d_after
       OR d_watermark > coalesce(pg_sequence_last_value('audit_events_seq'), 0)
       OR d_issued IS NULL OR d_issued < now() OR d_issued > clock_timestamp()
       OR d_issued <= last.issued_at THEN
        RAISE EXCEPTION 'audit_digests_append: the digest does not continue the chain'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO audit_signing_keys (kid, public_jwk, first_signed_at)
    VALUES (d_kid, p_public_jwk, d_issued)
    ON CONFLICT (kid) DO NOTHING;
    IF NOT FOUND AND (SELECT k.public_jwk FROM audit_signing_keys k WHERE k.kid = d_kid)
                     IS DISTINCT FROM p_public_jwk THEN
        RAISE EXCEPTION 'audit_digests_append: key id % already names another key', d_kid
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO audit_digests (number, issued_at, kid, after_seq, watermark, heads, prev_hash,
        hash, jws)
    VALUES (d_number, d_issued, d_kid, d_after, d_watermark,
        jsonb_array_length(payload -> 'heads'), d_prev, sha256(convert_to(p_jws, 'UTF8')),
        p_jws);
    RETURN d_number;
END
$$;

-- --- Every writing function: the owner's rights, a pinned search_path, the app's EXECUTE ---
-- pg_catalog first, so no function or operator of the caller's can stand in for a built-in;
-- pg_temp last, so no temporary table of the caller's can stand in for an audit table.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'audit_events_append(text, text, text, text, text, inet, text, text, uuid[],
            timestamptz[], text[], text[], text[], text[], text[], text[], uuid[], jsonb[],
            bytea[])'::regprocedure,
        'audit_events_append_one(text, text, text, text, text, inet, text, text, uuid,
            timestamptz, text, text, text, text, text, text, uuid, jsonb, bytea)'::regprocedure,
        'audit_events_append_batch(text[], text[], text[], text[], text[], inet[], text[],
            text[], integer[], uuid[], timestamptz[], text[], text[], text[], text[], text[],
            text[], uuid[], jsonb[], bytea[])'::regprocedure,
        'audit_digests_append(text, jsonb)'::regprocedure
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
                       fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO bff_app', fn);
    END LOOP;
END
$$;
