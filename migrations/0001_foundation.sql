-- Foundation: registrations, patients, and the append-only audit log.
--
-- Two roles. Migrations run as the owner (MIGRATIONS_DATABASE_URL). The application logs in
-- as a role that is a member of `bff_app` (DATABASE_URL), which may INSERT and SELECT the
-- audit log and nothing more. Creating `bff_app` needs CREATEROLE; where the migrations role
-- lacks it, a DBA creates the role once beforehand and this step is skipped.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bff_app') THEN
        CREATE ROLE bff_app NOLOGIN;
    END IF;
END
$$;

-- One row per Auth0 user who registered with the service. Registration is idempotent.
CREATE TABLE registrations (
    auth0_user_id  text PRIMARY KEY CHECK (length(auth0_user_id) BETWEEN 1 AND 255),
    email          text CHECK (length(email) <= 320),
    registered_at  timestamptz NOT NULL DEFAULT now(),
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);

-- Patients after FHIR Patient. `scope` is the token's org_id, else the creator's sub.
CREATE TABLE patients (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scope              text NOT NULL,
    created_by         text NOT NULL,
    identifier_system  text CHECK (length(identifier_system) <= 255),
    identifier_value   text CHECK (length(identifier_value) <= 255),
    given_name         text NOT NULL CHECK (length(given_name) BETWEEN 1 AND 200),
    family_name        text NOT NULL CHECK (length(family_name) BETWEEN 1 AND 200),
    birth_date         date NOT NULL,
    gender             text CHECK (gender IN ('male', 'female', 'other', 'unknown')),
    phone              text CHECK (length(phone) <= 40),
    email              text CHECK (length(email) <= 320),
    address            jsonb,
    active             boolean NOT NULL DEFAULT true,
    version            integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    CHECK ((identifier_system IS NULL) = (identifier_value IS NULL))
);

-- One live patient per identifier per scope; a deleted patient frees its identifier.
CREATE UNIQUE INDEX patients_scope_identifier_key
    ON patients (scope, identifier_system, identifier_value)
    WHERE deleted_at IS NULL AND identifier_value IS NOT NULL;
-- Newest-first keyset listing within a scope.
CREATE INDEX patients_scope_created_idx
    ON patients (scope, created_at DESC, id DESC) WHERE deleted_at IS NULL;

-- The audit log, after FHIR AuditEvent, partitioned by month on recorded_at.
CREATE SEQUENCE audit_events_seq AS bigint;

CREATE TABLE audit_events (
    seq             bigint NOT NULL DEFAULT nextval('audit_events_seq'),
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    scope           text NOT NULL,
    actor           text,
    client_id       text,
    session_id      text,
    token_id        text,
    source_ip       inet,
    user_agent      text CHECK (length(user_agent) <= 512),
    action          text NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)+$'),
    crud            char(1) NOT NULL CHECK (crud IN ('C', 'R', 'U', 'D', 'E')),
    outcome         text NOT NULL CHECK (outcome IN ('success', 'denied', 'failed')),
    outcome_reason  text CHECK (length(outcome_reason) <= 500),
    entity_type     text,
    entity_id       text,
    patient_id      uuid,
    request_id      text,
    detail          jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash       bytea,
    hash            bytea NOT NULL,
    PRIMARY KEY (seq, recorded_at)
) PARTITION BY RANGE (recorded_at);

ALTER SEQUENCE audit_events_seq OWNED BY audit_events.seq;

-- Rows in a month with no partition yet land here instead of failing.
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

CREATE INDEX audit_events_scope_time_idx ON audit_events (scope, recorded_at DESC, seq DESC);
CREATE INDEX audit_events_scope_seq_idx ON audit_events (scope, seq);
CREATE INDEX audit_events_patient_idx ON audit_events (patient_id, seq) WHERE patient_id IS NOT NULL;
CREATE INDEX audit_events_request_idx ON audit_events (request_id) WHERE request_id IS NOT NULL;

-- Append-only for everyone, the owner included: no UPDATE, DELETE or TRUNCATE.
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();

CREATE FUNCTION audit_events_protect_partition(partition regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()', partition);
END
$$;

SELECT audit_events_protect_partition('audit_events');
SELECT audit_events_protect_partition('audit_events_default');

-- Monthly partitions from the current month, `months_ahead` months forward. Idempotent.
-- A month whose rows already sit in the default partition is skipped (attaching would fail);
-- those rows stay queryable through the parent table.
CREATE FUNCTION audit_events_ensure_partitions(months_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', now())::date;
    created integer := 0;
    name text;
BEGIN
    FOR i IN 0..months_ahead LOOP
        name := format('audit_events_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(name) IS NULL AND NOT EXISTS (
            SELECT 1 FROM audit_events_default
            WHERE recorded_at >= month_start AND recorded_at < month_start + interval '1 month'
        ) THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                name, month_start, (month_start + interval '1 month')::date);
            PERFORM audit_events_protect_partition(name::regclass);
            created := created + 1;
        END IF;
        month_start := (month_start + interval '1 month')::date;
    END LOOP;
    RETURN created;
END
$$;

SELECT audit_events_ensure_partitions(3);

-- The application role: full use of its own tables, append and read only on the audit log.
GRANT SELECT, INSERT, UPDATE, DELETE ON registrations, patients TO bff_app;
GRANT SELECT, INSERT ON audit_events TO bff_app;
GRANT USAGE ON SEQUENCE audit_events_seq TO bff_app;
