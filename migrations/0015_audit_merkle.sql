-- A Merkle tree per audit scope (RFC 9162), and the signed checkpoints of its heads
-- (app/audit/merkle.py, app/audit/checkpoints.py, docs/audit.md "Proofs").
--
-- The leaves of a scope's tree are its events' chained hashes, in seq order: leaf i is
-- SHA-256(0x00 || hash of the scope's event i), a node is SHA-256(0x01 || left || right).
-- Every complete subtree is stored (`audit_tree_nodes`: level 0 the leaves, a node at level
-- L and index i covering leaves [i * 2^L, (i + 1) * 2^L)), so appending a leaf writes the
-- nodes it completes (one on average, log2(n) at most) and a proof reads O(log n) nodes by
-- their keys, never the events.
--
-- Only `audit_trees_extend` writes the tree, with its owner's rights; the application role
-- may read it. The digest issuer calls it under the digest lock, up to the watermark it
-- signs (every event at or below it committed, or never will be), so leaves arrive in seq
-- order with no gap, after commit: the append path is unchanged.

CREATE TABLE audit_trees (
    scope     text PRIMARY KEY,
    size      bigint NOT NULL CHECK (size >= 0),
    last_seq  bigint NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE audit_tree_nodes (
    scope  text NOT NULL,
    level  smallint NOT NULL CHECK (level BETWEEN 0 AND 62),
    idx    bigint NOT NULL CHECK (idx >= 0),
    hash   bytea NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (scope, level, idx)
);

-- Which leaf an event is: GET /api/audit-events/{id}/inclusion finds it by the event's id.
CREATE TABLE audit_tree_leaves (
    scope  text NOT NULL,
    idx    bigint NOT NULL CHECK (idx >= 0),
    seq    bigint NOT NULL UNIQUE,
    id     uuid NOT NULL,
    PRIMARY KEY (scope, idx)
);
CREATE INDEX audit_tree_leaves_id_idx ON audit_tree_leaves (id);

-- One signed checkpoint (C2SP signed note) per scope and tree size, issued with a digest.
CREATE TABLE audit_checkpoints (
    scope          text NOT NULL,
    size           bigint NOT NULL CHECK (size >= 1),
    root           bytea NOT NULL CHECK (octet_length(root) = 32),
    digest_number  bigint NOT NULL,  -- the digest it was issued with
    issued_at      timestamptz NOT NULL,
    note           text NOT NULL,
    PRIMARY KEY (scope, size)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_trees', 'audit_tree_nodes', 'audit_tree_leaves',
                             'audit_checkpoints'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE DELETE ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION audit_refuse_change()', t || '_no_delete', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION audit_refuse_change()', t || '_no_truncate', t);
        EXECUTE format('REVOKE ALL ON %I FROM bff_app, PUBLIC', t);
        EXECUTE format('GRANT SELECT ON %I TO bff_app', t);
    END LOOP;
END
$$;
-- Nodes, leaves and checkpoints are never changed; a tree's row grows (size, last_seq).
CREATE TRIGGER audit_tree_nodes_no_update BEFORE UPDATE ON audit_tree_nodes
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_tree_leaves_no_update BEFORE UPDATE ON audit_tree_leaves
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

CREATE FUNCTION audit_trees_refuse_shrink() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.scope <> OLD.scope OR NEW.size < OLD.size OR NEW.last_seq < OLD.last_seq THEN
        RAISE EXCEPTION 'audit_trees only grow: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_trees_only_grow BEFORE UPDATE ON audit_trees
    FOR EACH ROW EXECUTE FUNCTION audit_trees_refuse_shrink();

-- The root of `p_scope`'s tree of size `p_size` (<= its size), from the complete subtrees
-- that make it up (the binary digits of the size, largest first), folded from the right.
CREATE FUNCTION audit_tree_root(p_scope text, p_size bigint) RETURNS bytea
LANGUAGE plpgsql STABLE AS $$
DECLARE
    start bigint := 0;
    lvl integer;
    piece bytea;
    pieces bytea[] := '{}';
    acc bytea;
BEGIN
    IF p_size IS NULL OR p_size < 1 THEN
        RETURN NULL;
    END IF;
    FOR lvl IN REVERSE 62..0 LOOP
        IF (p_size >> lvl) & 1 = 1 THEN
            SELECT n.hash INTO piece FROM audit_tree_nodes n
            WHERE n.scope = p_scope AND n.level = lvl AND n.idx = start >> lvl;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            pieces := pieces || piece;
            start := start + (1::bigint << lvl);
        END IF;
    END LOOP;
    acc := pieces[cardinality(pieces)];
    FOR i IN REVERSE cardinality(pieces) - 1..1 LOOP
        acc := sha256('\x01'::bytea || pieces[i] || acc);
    END LOOP;
    RETURN acc;
END
$$;

-- Extend every scope's tree with its events at or below `p_upto` (a watermark), in seq
-- order; at most `p_limit` events in all (NULL: no limit), so `python -m app audit
-- build-trees` can bring a large log in by slices. Returns (scope, size) of each tree that
-- grew. Under the digest lock (two-integer key 'AUDG', 0), which it takes.
CREATE FUNCTION audit_trees_extend(p_upto bigint, p_limit bigint DEFAULT NULL)
RETURNS TABLE (scope text, size bigint)
LANGUAGE plpgsql AS $$
DECLARE
    s text;
    t_size bigint;
    t_last bigint;
    ev record;
    h bytea;
    i bigint;
    lvl integer;
    sibling bytea;
    budget bigint := coalesce(p_limit, 9223372036854775807);
    grown boolean;
BEGIN
    IF p_upto IS NULL OR p_upto > coalesce(pg_sequence_last_value('audit_events_seq'), 0)
       OR p_upto > audit_events_watermark() THEN
        RAISE EXCEPTION 'audit_trees_extend: not a watermark'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(x'41554447'::integer, 0);
    FOR s IN
        SELECT h2.scope FROM audit_chain_heads h2
        LEFT JOIN audit_trees t ON t.scope = h2.scope
        WHERE h2.last_seq > coalesce(t.last_seq, 0)
        ORDER BY h2.scope
    LOOP
        EXIT WHEN budget <= 0;
        SELECT t.size, t.last_seq INTO t_size, t_last FROM audit_trees t WHERE t.scope = s;
        IF NOT FOUND THEN
            INSERT INTO audit_trees (scope, size, last_seq) VALUES (s, 0, 0);
            t_size := 0;
            t_last := 0;
        END IF;
        grown := false;
        FOR ev IN
            SELECT e.seq, e.id, e.hash FROM audit_events e
            WHERE e.scope = s AND e.seq > t_last AND e.seq <= p_upto
            ORDER BY e.seq LIMIT budget
        LOOP
            h := sha256('\x00'::bytea || ev.hash);
            i := t_size;
            lvl := 0;
            INSERT INTO audit_tree_nodes (scope, level, idx, hash) VALUES (s, 0, i, h);
            INSERT INTO audit_tree_leaves (scope, idx, seq, id) VALUES (s, i, ev.seq, ev.id);
            WHILE i % 2 = 1 LOOP
                SELECT n.hash INTO sibling FROM audit_tree_nodes n
                WHERE n.scope = s AND n.level = lvl AND n.idx = i - 1;
                h := sha256('\x01'::bytea || sibling || h);
                lvl := lvl + 1;
                i := i / 2;
                INSERT INTO audit_tree_nodes (scope, level, idx, hash) VALUES (s, lvl, i, h);
            END LOOP;
            t_size := t_size + 1;
            t_last := ev.seq;
            budget := budget - 1;
            grown := true;
        END LOOP;
        IF grown THEN
            UPDATE audit_trees t SET size = t_size, last_seq = t_last WHERE t.scope = s;
            scope := s;
            size := t_size;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

-- Store a checkpoint the service signed: the tree's size and root must be what the stored
-- tree says, the digest it was issued with the last one. The database cannot check the
-- signature; the verifier does (docs/audit.md).
CREATE FUNCTION audit_checkpoints_append(
    p_scope text, p_size bigint, p_root bytea, p_digest bigint, p_note text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    last_digest audit_digests%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(x'41554447'::integer, 0);
    SELECT * INTO last_digest FROM audit_digests ORDER BY number DESC LIMIT 1;
    IF last_digest.number IS DISTINCT FROM p_digest THEN
        RAISE EXCEPTION 'audit_checkpoints_append: not issued with the last digest'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_size IS NULL OR p_size > (SELECT t.size FROM audit_trees t WHERE t.scope = p_scope)
       OR audit_tree_root(p_scope, p_size) IS DISTINCT FROM p_root
       OR position(E'\n' || p_size::text || E'\n' || encode(p_root, 'base64') || E'\n'
                   IN p_note) = 0 THEN
        RAISE EXCEPTION 'audit_checkpoints_append: the checkpoint is not the stored tree''s'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO audit_checkpoints (scope, size, root, digest_number, issued_at, note)
    VALUES (p_scope, p_size, p_root, p_digest, last_digest.issued_at, p_note);
END
$$;

DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'audit_trees_extend(bigint, bigint)'::regprocedure,
        'audit_checkpoints_append(text, bigint, bytea, bigint, text)'::regprocedure,
        'audit_tree_root(text, bigint)'::regprocedure
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
                       fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO bff_app', fn);
    END LOOP;
END
$$;
