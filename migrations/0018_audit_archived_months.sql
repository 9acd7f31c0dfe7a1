-- The months sealed into archives and taken out of audit_events (`python -m app audit
-- archive`, docs/audit.md "Sealed archives and retention"). A patient's access report
-- reads this to say which months it no longer holds, so it never omits them silently; the
-- archives themselves answer for those months (`python -m app audit access-report`).
-- Written by the migrations owner, in the transaction that detaches the partition; the
-- app role reads it only. Append-only: an archived month stays archived.

CREATE TABLE audit_archived_months (
    month        text PRIMARY KEY CHECK (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    events       bigint NOT NULL CHECK (events >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    dropped      boolean NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER audit_archived_months_no_change
    BEFORE UPDATE OR DELETE ON audit_archived_months
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_archived_months_no_truncate
    BEFORE TRUNCATE ON audit_archived_months
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
REVOKE ALL ON audit_archived_months FROM bff_app, PUBLIC;
GRANT SELECT ON audit_archived_months TO bff_app;
