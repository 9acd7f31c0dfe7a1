-- Witness cosignatures of the scopes' Merkle checkpoints (docs/audit.md, "Running a
-- witness"). A witness checks that a checkpoint extends the last one it cosigned, then
-- cosigns it (C2SP tlog-cosignature); the service checks the cosignature against
-- AUDIT_WITNESS_KEYS and keeps it here, append-only, to serve with the checkpoint.

CREATE TABLE audit_checkpoint_cosignatures (
    scope        text NOT NULL,
    size         bigint NOT NULL,
    witness      text NOT NULL CHECK (witness ~ '^[A-Za-z0-9._-]{1,64}$'),
    line         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (scope, size, witness)
);

CREATE TRIGGER audit_checkpoint_cosignatures_no_change
    BEFORE UPDATE OR DELETE ON audit_checkpoint_cosignatures
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoint_cosignatures_no_truncate
    BEFORE TRUNCATE ON audit_checkpoint_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
REVOKE ALL ON audit_checkpoint_cosignatures FROM bff_app, PUBLIC;
GRANT SELECT ON audit_checkpoint_cosignatures TO bff_app;

-- Keep one witness's cosignature of one checkpoint: 'stored', or 'already stored' (a
-- witness that cosigns again keeps its first line).
CREATE FUNCTION audit_cosignatures_append(
    p_scope text, p_size bigint, p_witness text, p_line text
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_checkpoints c WHERE c.scope = p_scope AND c.size = p_size)
    THEN
        RAISE EXCEPTION 'audit_cosignatures_append: no such checkpoint'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO audit_checkpoint_cosignatures (scope, size, witness, line)
    VALUES (p_scope, p_size, p_witness, p_line)
    ON CONFLICT (scope, size, witness) DO NOTHING;
    RETURN CASE WHEN FOUND THEN 'stored' ELSE 'already stored' END;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_cosignatures_append(text, bigint, text, text) '
                   'SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END
$$;
REVOKE ALL ON FUNCTION audit_cosignatures_append(text, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_cosignatures_append(text, bigint, text, text) TO bff_app;
