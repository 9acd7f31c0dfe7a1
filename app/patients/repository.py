"""Patient storage: create, read, versioned update, soft delete, and prior versions.

Every query takes the caller's scope (`app.audit.events.scope_of`) and filters by it in SQL,
so a patient of another scope is indistinguishable from one that does not exist. Changes take the
row lock (`SELECT ... FOR UPDATE`) and compare the version the client read, so of two
concurrent updates from the same version exactly one wins. Each version replaced by an update
or a delete is copied to `patient_versions`, the only place old values are kept.

Search, cursors and audited page reads are in `app.patients.search`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.audit.events import Actor, Event
from app.audit.record import record_change
from app.core.errors import Conflict, Gone, NotFound, PreconditionFailed
from app.patients.schemas import etag, patient_json

COLUMNS = """id, identifier_system, identifier_value, given_name, family_name, birth_date,
    gender, phone, email, address::text AS address, active, version, created_at, updated_at,
    deleted_at"""
# Fields a client may set, in the order of the `_VALUES` parameters ($3 .. $14).
EDITABLE = (
    "identifier",
    "given_name",
    "family_name",
    "birth_date",
    "gender",
    "phone",
    "email",
    "address",
    "active",
)
_VALUES = """identifier_system = $3, identifier_value = $4, given_name = $5, family_name = $6,
    given_name_folded = $7, family_name_folded = $8, birth_date = $9, gender = $10,
    phone = $11, email = $12, address = $13::jsonb, active = $14"""

# What an insert writes, in the order of its parameters: $1 scope, $2 created_by, then the
# `_values` of the editable fields ($3 .. $14); the insert with a chosen id adds it as $15.
_INSERTED = """scope, created_by, identifier_system, identifier_value, given_name, family_name,
    given_name_folded, family_name_folded, birth_date, gender, phone, email, address, active"""
_INSERTED_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14"
_ON_DUPLICATE = """ON CONFLICT (scope, identifier_system, identifier_value)
    WHERE deleted_at IS NULL AND identifier_value IS NOT NULL
    DO NOTHING"""
INSERT_PATIENT = f"""
INSERT INTO patients ({_INSERTED}) VALUES ({_INSERTED_VALUES})
{_ON_DUPLICATE}
RETURNING {COLUMNS}"""
INSERT_PATIENT_WITH_ID = f"""
INSERT INTO patients (id, {_INSERTED}) VALUES ($15, {_INSERTED_VALUES})
{_ON_DUPLICATE}
RETURNING {COLUMNS}"""
# Several patients at once (group commit): one array per inserted column, ids chosen by the
# callers; rows whose identifier is taken return nothing.
INSERT_PATIENTS = f"""
INSERT INTO patients (id, {_INSERTED})
SELECT id, scope, created_by, identifier_system, identifier_value, given_name, family_name,
    given_name_folded, family_name_folded, birth_date, gender, phone, email, address::jsonb,
    active
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::date[], $11::text[], $12::text[], $13::text[],
    $14::text[], $15::bool[])
    AS new (id, scope, created_by, identifier_system, identifier_value, given_name,
        family_name, given_name_folded, family_name_folded, birth_date, gender, phone, email,
        address, active)
{_ON_DUPLICATE}
RETURNING {COLUMNS}"""
SELECT_BY_IDENTIFIER = """
SELECT id FROM patients
WHERE scope = $1 AND identifier_system = $2 AND identifier_value = $3 AND deleted_at IS NULL
"""
SELECT_PATIENT = f"SELECT {COLUMNS} FROM patients WHERE scope = $1 AND id = $2"
LOCK_PATIENT = SELECT_PATIENT + " FOR UPDATE"
UPDATE_PATIENT = f"""
UPDATE patients SET {_VALUES}, version = version + 1, updated_at = now()
WHERE scope = $1 AND id = $2 AND version = $15
RETURNING {COLUMNS}
"""
DELETE_PATIENT = f"""
UPDATE patients SET deleted_at = now(), updated_at = now(), version = version + 1
WHERE scope = $1 AND id = $2 AND version = $3
RETURNING {COLUMNS}
"""
INSERT_VERSION = """
INSERT INTO patient_versions (patient_id, version, scope, data, changed_fields, change,
    valid_from, replaced_by, request_id)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9)
"""


class PatientNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("no patient with this id")


class PatientGone(Gone):
    def __init__(self) -> None:
        super().__init__("this patient was deleted")


class VersionMismatch(PreconditionFailed):
    """If-Match named a version that is no longer current; the current ETag is sent back."""

    def __init__(self, current_version: int) -> None:
        super().__init__(
            "the patient has changed since you read it; fetch it and try again",
            headers={"ETag": etag(current_version)},
        )


class DuplicateIdentifier(Conflict):
    """A live patient in this scope already has the identifier; its id is in the body."""

    def __init__(self, existing_id: UUID | None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(
            "a patient with this identifier already exists",
            headers=headers,
            extra={"existing_id": str(existing_id) if existing_id else None},
        )
        self.existing_id = existing_id


def fold(text: str) -> str:
    """The search form of a name: compatibility-decomposed, marks dropped, case-folded."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _values(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """The `_VALUES` parameters $3..$14 for a full set of editable fields."""
    identifier = fields.get("identifier")
    address = fields.get("address")
    return (
        identifier["system"] if identifier else None,
        identifier["value"] if identifier else None,
        fields["given_name"],
        fields["family_name"],
        fold(fields["given_name"]),
        fold(fields["family_name"]),
        fields["birth_date"],
        fields.get("gender"),
        fields.get("phone"),
        fields.get("email"),
        orjson.dumps(address).decode() if address is not None else None,
        fields.get("active", True),
    )


async def _existing_id(conn: asyncpg.Connection, scope: str, fields: Mapping[str, Any]) -> Any:
    identifier = fields.get("identifier")
    if not identifier:
        return None
    return await conn.fetchval(
        SELECT_BY_IDENTIFIER, scope, identifier["system"], identifier["value"]
    )


async def create_patient(
    conn: asyncpg.Connection, scope: str, created_by: str, fields: Mapping[str, Any]
) -> asyncpg.Record:
    """Insert a patient; `DuplicateIdentifier` (transaction still usable) when taken.

    `INSERT ... ON CONFLICT DO NOTHING` on the unique index: a concurrent insert of the same
    identifier waits for the first to commit, then finds the conflict, so there is one row.
    """
    for _ in range(3):
        row: asyncpg.Record | None = await conn.fetchrow(
            INSERT_PATIENT, scope, created_by, *_values(fields)
        )
        if row is not None:
            return row
        existing = await _existing_id(conn, scope, fields)
        if existing is not None:
            raise DuplicateIdentifier(existing)
        # The holder was deleted between the two statements: the identifier is free again.
    raise DuplicateIdentifier(None)


async def create_patient_recorded(
    conn: asyncpg.Connection,
    patient_id: UUID,
    scope: str,
    created_by: str,
    fields: Mapping[str, Any],
    actor: Actor,
    event: Event,
) -> asyncpg.Record | None:
    """Insert a patient with the given id and record `event` for it, in one statement, so in
    one round trip and one transaction (call it outside a transaction: the statement is its
    own).

    None, and nothing written, when a live patient of the scope has the identifier: then
    `create_patient` in a transaction tells a duplicate from a race, and records the refusal.
    """
    arguments = (scope, created_by, *_values(fields), patient_id)
    return await record_change(conn, INSERT_PATIENT_WITH_ID, arguments, actor, event)


def insert_values(
    patient_id: UUID, scope: str, created_by: str, fields: Mapping[str, Any]
) -> tuple[Any, ...]:
    """One row of `insert_patients`: the id, scope, author and the editable fields."""
    return (patient_id, scope, created_by, *_values(fields))


async def insert_patients(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]
) -> list[asyncpg.Record]:
    """Insert several patients (`insert_values` rows) in one statement; the rows inserted,
    without those whose identifier a live patient of the scope has (or an earlier row of
    the same batch took)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    inserted: list[asyncpg.Record] = await conn.fetch(INSERT_PATIENTS, *columns)
    return inserted


async def get_patient(
    conn: asyncpg.Connection, scope: str, patient_id: UUID
) -> asyncpg.Record | None:
    """The patient in this scope, deleted or not (check `deleted_at`); None when absent."""
    row: asyncpg.Record | None = await conn.fetchrow(SELECT_PATIENT, scope, patient_id)
    return row


async def read_patient(conn: asyncpg.Connection, scope: str, patient_id: UUID) -> asyncpg.Record:
    """The live patient: `PatientNotFound` (any other scope too) or `PatientGone`."""
    return _live(await get_patient(conn, scope, patient_id))


def _live(row: asyncpg.Record | None) -> asyncpg.Record:
    if row is None:
        raise PatientNotFound
    if row["deleted_at"] is not None:
        raise PatientGone
    return row


def _current(row: asyncpg.Record, expected_version: int | None) -> None:
    if expected_version is not None and row["version"] != expected_version:
        raise VersionMismatch(row["version"])


async def update_patient(
    conn: asyncpg.Connection,
    scope: str,
    patient_id: UUID,
    changes: Mapping[str, Any],
    *,
    expected_version: int,
    changed_by: str | None,
    request_id: str | None = None,
) -> tuple[asyncpg.Record, list[str]]:
    """Apply `changes` (API field names; None clears) when the version is still current.

    Returns the row as it now is and the names of the fields that really changed; when none
    did, nothing is written and the version stays. Must run inside a transaction.
    """
    old = _live(await conn.fetchrow(LOCK_PATIENT, scope, patient_id))
    _current(old, expected_version)
    before = patient_json(old)
    after = {name: before[name] for name in EDITABLE} | dict(changes)
    changed = [name for name in EDITABLE if name in changes and after[name] != before[name]]
    if not changed:
        return old, []
    await _archive(conn, scope, old, changed, "updated", changed_by, request_id)
    try:
        async with conn.transaction():  # a savepoint: a duplicate must not end the transaction
            row = await conn.fetchrow(
                UPDATE_PATIENT, scope, patient_id, *_values(after), old["version"]
            )
    except asyncpg.UniqueViolationError:
        raise DuplicateIdentifier(await _existing_id(conn, scope, after)) from None
    assert row is not None  # the row lock guarantees the version
    return row, changed


async def delete_patient(
    conn: asyncpg.Connection,
    scope: str,
    patient_id: UUID,
    *,
    expected_version: int | None,
    deleted_by: str | None,
    request_id: str | None = None,
) -> asyncpg.Record:
    """Soft-delete: the row stays (for the access report) but leaves lists and frees its
    identifier. Must run inside a transaction."""
    old = _live(await conn.fetchrow(LOCK_PATIENT, scope, patient_id))
    _current(old, expected_version)
    await _archive(conn, scope, old, [], "deleted", deleted_by, request_id)
    row: asyncpg.Record = await conn.fetchrow(DELETE_PATIENT, scope, patient_id, old["version"])
    return row


async def _archive(
    conn: asyncpg.Connection,
    scope: str,
    old: asyncpg.Record,
    changed: list[str],
    change: str,
    actor: str | None,
    request_id: str | None,
) -> None:
    data = {name: value for name, value in patient_json(old).items() if name in EDITABLE}
    await conn.execute(
        INSERT_VERSION,
        old["id"],
        old["version"],
        scope,
        orjson.dumps(data).decode(),
        changed,
        change,
        old["updated_at"],
        actor,
        request_id,
    )
