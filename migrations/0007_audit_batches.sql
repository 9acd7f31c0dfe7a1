-- Group commit for the audit log: one statement appends the events of many requests, in
-- many scopes, so concurrent reads share one round trip, one transaction and one WAL flush
-- (app/audit_writer.py).
--
-- The per-request arrays (p_scopes .. p_request_ids) hold each request's actor, once; the
-- per-event arrays hold one entry per event, and p_groups[i] is the request (1-based index
-- into the per-request arrays) that event i belongs to. Within a scope, events are chained
-- in array order: the same links, locks and watermark key as `audit_events_append`
-- (0002_audit.sql), so the verifier and the checkpoint feed cannot tell the two apart.
--
-- Locks: every scope's chain lock is taken before any seq number, in the order of the lock
-- keys, so two batches never wait on each other in a cycle, and a single-scope writer
-- (which holds one chain lock and waits for nothing else) never closes a cycle either.
CREATE FUNCTION audit_events_append_batch(
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
    INSERT INTO audit_chain_heads AS h (scope, last_seq, last_hash, updated_at)
    SELECT s.scope, s.last_seq, s.last_hash, recorded
    FROM unnest(head_scopes, head_seqs, head_hashes) AS s(scope, last_seq, last_hash)
    ON CONFLICT (scope) DO UPDATE
        SET last_seq = excluded.last_seq, last_hash = excluded.last_hash,
            updated_at = excluded.updated_at;
END
$$;
