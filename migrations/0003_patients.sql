-- Patients, part two: name search ignoring case and accents, prior versions for auditors,
-- and idempotency keys for creating POSTs. Depends on 0001 only.

-- The search form of each name (NFKD, combining marks dropped, case-folded), written by
-- app.patients.fold, so search does not need the `unaccent` extension. Rows inserted by other
-- SQL (fixtures, older rows) get a lower-cased stand-in, which finds them by plain prefix.
ALTER TABLE patients
    ADD COLUMN given_name_folded  text,
    ADD COLUMN family_name_folded text;

UPDATE patients
SET given_name_folded = lower(given_name), family_name_folded = lower(family_name);

ALTER TABLE patients
    ALTER COLUMN given_name_folded SET NOT NULL,
    ALTER COLUMN family_name_folded SET NOT NULL;

CREATE FUNCTION patients_default_folded_names() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.given_name_folded := coalesce(NEW.given_name_folded, lower(NEW.given_name));
    NEW.family_name_folded := coalesce(NEW.family_name_folded, lower(NEW.family_name));
    RETURN NEW;
END
$$;

CREATE TRIGGER patients_default_folded_names
    BEFORE INSERT ON patients
    FOR EACH ROW EXECUTE FUNCTION patients_default_folded_names();

-- Prefix search within a scope: byte-order operator class, so `~>=~`/`~<~` ranges use it.
CREATE INDEX patients_scope_given_folded_idx
    ON patients (scope, given_name_folded text_pattern_ops) WHERE deleted_at IS NULL;
CREATE INDEX patients_scope_family_folded_idx
    ON patients (scope, family_name_folded text_pattern_ops) WHERE deleted_at IS NULL;
CREATE INDEX patients_scope_birth_date_idx
    ON patients (scope, birth_date) WHERE deleted_at IS NULL;

-- Each version of a patient replaced by an update or a delete, with its values. The only
-- place old values are kept; read through the access report (read:audit_events). The
-- application may add and read versions, never change or remove them.
CREATE TABLE patient_versions (
    patient_id      uuid NOT NULL REFERENCES patients (id),
    version         integer NOT NULL CHECK (version >= 1),
    scope           text NOT NULL,
    data            jsonb NOT NULL,
    changed_fields  text[] NOT NULL DEFAULT '{}',
    change          text NOT NULL CHECK (change IN ('updated', 'deleted')),
    valid_from      timestamptz NOT NULL,
    valid_until     timestamptz NOT NULL DEFAULT now(),
    replaced_by     text,
    request_id      text,
    PRIMARY KEY (patient_id, version)
);

-- The first response to each (caller, key), replayed for 24 h. `status` is NULL only inside
-- the claiming transaction. Expired rows are taken over by a new claim or purged.
CREATE TABLE idempotency_keys (
    caller           text NOT NULL,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    status           integer CHECK (status BETWEEN 100 AND 599),
    body             jsonb,
    headers          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

GRANT SELECT, INSERT ON patient_versions TO bff_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO bff_app;
