-- One audit event per request (issue 15), and "who saw this patient" as one indexed lookup.
--
-- A request that shows patient data writes one event: a search one `patient.searched`, a
-- single read one `patient.read`, the profile page one `patient.read` (`via` profile). An
-- event that shows several patients lists their ids in `detail.patient_ids`, so the ids are
-- part of what its hash covers (app/audit/chain.py hashes `detail`). An event about one
-- patient keeps it in `patient_id`, as before.
--
-- `audit_event_patients` holds, for every event that named patients either way, one row with
-- their ids in an array under a GIN index, written by the append functions in the same
-- statement as the event. `GET /api/audit-events?patient_id=` and the access report find a
-- patient's events there (`patient_ids @> ARRAY[id]`), then fetch them by primary key.
-- docs/benchmarks.md has the measurement behind the choice (`python -m bench.linkcost`): at
-- 200,000 events of 20 patients, appending an event's links costs Postgres 157 µs of CPU
-- this way against 515 µs for a narrow (patient_id, seq) table with a b-tree, and takes a
-- quarter of the space; a page of a patient seen 9,000 times costs 0.7 ms against 0.1 ms.
-- Every read writes links and few requests look them up, so the write side decides.
--
-- Existing events stay as they are: they are hash-chained, and merging a page's per-patient
-- `patient.read` events into one would rewrite the chain. Every existing event that names a
-- patient is linked below, so the lookups find the old events and the new alike.

CREATE TABLE audit_event_patients (
    seq          bigint PRIMARY KEY,
    recorded_at  timestamptz NOT NULL,
    patient_ids  uuid[] NOT NULL CHECK (cardinality(patient_ids) > 0)
);
CREATE INDEX audit_event_patients_ids_idx ON audit_event_patients USING gin (patient_ids);

CREATE TRIGGER audit_event_patients_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_event_patients
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
SELECT audit_events_protect_partition('audit_event_patients');

GRANT SELECT, INSERT ON audit_event_patients TO bff_app;

-- The patients an event names: its `patient_id` and the ids in `detail.patient_ids`, once.
CREATE FUNCTION audit_event_patient_ids(p_patient_id uuid, p_detail jsonb) RETURNS SETOF uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_patient_id WHERE p_patient_id IS NOT NULL
    UNION
    SELECT x::uuid FROM jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(p_detail -> 'patient_ids') = 'array'
             THEN p_detail -> 'patient_ids' ELSE '[]'::jsonb END) AS x
$$;

INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)
SELECT e.seq, e.recorded_at, ARRAY(SELECT audit_event_patient_ids(e.patient_id, e.detail))
FROM audit_events e
WHERE e.patient_id IS NOT NULL OR e.detail ? 'patient_ids';

-- Replaced by audit_event_patients_ids_idx.
DROP INDEX audit_events_patient_idx;

-- The indexes on audit_events, each with the query it serves (app/audit/query.py):
--   primary key (seq, recorded_at)          fetching an event linked from a patient
--   audit_events_scope_time_idx             GET /api/audit-events: a scope's window, newest first
--   audit_events_scope_seq_idx              the checkpoint feed (?after_seq=), the chain verifier
--   audit_events_request_idx                ?request_id=
--   audit_events_scope_actor_time_idx       ?actor=
--   audit_events_scope_action_time_idx      ?action=patient.read
--   audit_events_scope_family_time_idx      ?action=patient.*
--   audit_events_scope_outcome_time_idx     ?outcome=denied|failed (partial: the rare ones)

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
    INSERT INTO audit_event_patients (seq, recorded_at, patient_ids)
    SELECT l.seq, recorded, l.ids
    FROM unnest(seqs, p_patient_ids, p_details) AS e(seq, patient_id, detail),
        LATERAL (SELECT e.seq, ARRAY(SELECT audit_event_patient_ids(e.patient_id, e.detail))
                 AS ids) AS l
    WHERE cardinality(l.ids) > 0;
    UPDATE audit_chain_heads SET last_seq = seqs[how_many], last_hash = prev, updated_at = recorded
    WHERE scope = p_scope;
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
           array_agg(h.last_seq ORDER BY s)
    INTO head_scopes, head_hashes, head_seqs
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
    recorded := clock_timestamp();  -- after the locks: grows with seq within a scope
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
