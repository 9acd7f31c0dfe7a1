-- Audit signing keys enter the database through the migrations owner only (docs/audit.md).
--
-- Until now `audit_digests_append` stored the public key its caller named the first time a
-- kid signed, so whoever held the application's login could register a key of their own,
-- and have a digest signed with it accepted as continuing the chain. Now:
-- 1. `audit_signing_key_register` registers a public key. It runs with its caller's rights
--    and only the owner may run it (`python -m app audit register-key`, as
--    MIGRATIONS_DATABASE_URL); `registered_at` marks the keys so registered.
-- 2. `audit_digests_append` stores a digest only when its kid was registered so, with the
--    public key the caller signs with, and never stores a key itself.
-- Keys stored before this file keep their rows (their digests refer to them), unregistered:
-- until the owner registers one (the same kid and key), no new digest is accepted under it.

-- --- 1. Registration by the owner -------------------------------------------------------------

-- A key registered before it signs has no first signature.
ALTER TABLE audit_signing_keys ALTER COLUMN first_signed_at DROP NOT NULL;
ALTER TABLE audit_signing_keys ADD COLUMN registered_at timestamptz;

-- Still append-only, with one exception: the owner registering a key stored before this
-- file (registered_at set once, nothing else changed).
CREATE FUNCTION audit_signing_keys_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.registered_at IS NULL AND NEW.registered_at IS NOT NULL
       AND (NEW.kid, NEW.public_jwk, NEW.first_signed_at)
           IS NOT DISTINCT FROM (OLD.kid, OLD.public_jwk, OLD.first_signed_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DROP TRIGGER audit_signing_keys_no_update_delete ON audit_signing_keys;
CREATE TRIGGER audit_signing_keys_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_signing_keys
    FOR EACH ROW EXECUTE FUNCTION audit_signing_keys_refuse_change();

REVOKE ALL ON audit_signing_keys FROM bff_app, PUBLIC;
GRANT SELECT ON audit_signing_keys TO bff_app;

-- Register the public key `p_public_jwk` under `p_kid`: 'registered', or 'already
-- registered' when it was; refused when the kid already names another key.
CREATE FUNCTION audit_signing_key_register(p_kid text, p_public_jwk jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    known audit_signing_keys%ROWTYPE;
BEGIN
    IF p_public_jwk ->> 'kid' IS DISTINCT FROM p_kid THEN
        RAISE EXCEPTION 'audit_signing_key_register: the key is not the one the kid names'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO known FROM audit_signing_keys k WHERE k.kid = p_kid FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_signing_keys (kid, public_jwk, registered_at)
        VALUES (p_kid, p_public_jwk, clock_timestamp());
        RETURN 'registered';
    END IF;
    IF known.public_jwk IS DISTINCT FROM p_public_jwk THEN
        RAISE EXCEPTION 'audit_signing_key_register: key id % already names another key', p_kid
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF known.registered_at IS NULL THEN
        UPDATE audit_signing_keys SET registered_at = clock_timestamp() WHERE kid = p_kid;
        RETURN 'registered';
    END IF;
    RETURN 'already registered';
END
$$;

-- --- 2. Digests under registered keys only ----------------------------------------------------
-- As in 0009, but the key must be registered by the owner, with the public key named here;
-- the function stores no key.
CREATE OR REPLACE FUNCTION audit_digests_append(p_jws text, p_public_jwk jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    parts text[] := string_to_array(p_jws, '.');
    header jsonb;
    payload jsonb;
    last audit_digests%ROWTYPE;
    registered audit_signing_keys%ROWTYPE;
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
    IF p_public_jwk ->> 'kid' IS DISTINCT FROM d_kid THEN
        RAISE EXCEPTION 'audit_digests_append: the key is not the one the header names'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO registered FROM audit_signing_keys k WHERE k.kid = d_kid;
    IF registered.registered_at IS NULL THEN
        RAISE EXCEPTION 'audit_digests_append: the key is not registered (python -m app audit '
            'register-key, as the migrations owner)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF registered.public_jwk IS DISTINCT FROM p_public_jwk THEN
        RAISE EXCEPTION 'audit_digests_append: the key id is registered with another key'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    d_number := (payload ->> 'number')::bigint;
    d_issued := (payload ->> 'issued_at')::timestamptz;
    d_prev := decode(payload ->> 'prev_hash', 'hex');
    d_after := (payload ->> 'after_seq')::bigint;
    d_watermark := (payload ->> 'watermark')::bigint;
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
    INSERT INTO audit_digests (number, issued_at, kid, after_seq, watermark, heads, prev_hash,
        hash, jws)
    VALUES (d_number, d_issued, d_kid, d_after, d_watermark,
        jsonb_array_length(payload -> 'heads'), d_prev, sha256(convert_to(p_jws, 'UTF8')),
        p_jws);
    RETURN d_number;
END
$$;

-- Both with a pinned search_path (pg_catalog first, pg_temp last: nothing of the caller's
-- stands in for a built-in or an audit table); the application may append, never register.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_digests_append(text, jsonb) SECURITY DEFINER '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION audit_signing_key_register(text, jsonb) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END
$$;
REVOKE ALL ON FUNCTION audit_digests_append(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_digests_append(text, jsonb) TO bff_app;
REVOKE ALL ON FUNCTION audit_signing_key_register(text, jsonb) FROM PUBLIC, bff_app;
