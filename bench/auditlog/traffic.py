"""Synthetic audit events shaped like production's, in time order, as COPY records.

The shape is the log the service writes, one event per request:

- scopes: as many as asked (`make_scopes`), half `org:<id>` and half `user:<sub>`, sizes
  skewed (a few large organisations, many small ones), none of them a scope the load
  uses, so no chain the load appends to is touched (their chains are not verified:
  `prev_hash` is random, `hash` is 32 random bytes, `audit_chain_heads` is left alone);
- per scope 1 to 30 users with a few sessions each (sub, client id, session id, token id,
  source IP, user agent), and 20 to 3,000 patients;
- actions: 35% `patient.searched` (crud E, no `patient_id`; `detail` = filters, returned,
  next_page, patient_ids: half are the unfiltered listing, 20 ids a page, the first page
  most often; the rest filtered, 0 to 5 ids), 35% `patient.read` (crud R, `patient_id`,
  `{"via": "get"}`), 8% `patient.created`, 10% `patient.updated`, 10% `user.signed_in`,
  2% `access.denied` (outcome denied);
- a unique `request_id` each; `seq` and `recorded_at` are the caller's.
"""

from __future__ import annotations

import bisect
import datetime as dt
import ipaddress
import itertools
import random
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

COLUMNS = (
    "seq",
    "id",
    "occurred_at",
    "recorded_at",
    "scope",
    "actor",
    "client_id",
    "session_id",
    "token_id",
    "source_ip",
    "user_agent",
    "action",
    "crud",
    "outcome",
    "outcome_reason",
    "entity_type",
    "entity_id",
    "patient_id",
    "request_id",
    "detail",
    "prev_hash",
    "hash",
)
# (action, crud, weight): one event per request.
MIX = (
    ("patient.searched", "E", 35),
    ("patient.read", "R", 35),
    ("patient.created", "C", 8),
    ("patient.updated", "U", 10),
    ("user.signed_in", "E", 10),
    ("access.denied", "R", 2),
)
PAGE = 20
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36",
)
FIELDS = ("given_name", "family_name", "birth_date", "gender", "phone", "email", "address")
SEARCH_FILTERS: tuple[tuple[list[str], int], ...] = (
    ([], 50),
    (["name"], 30),
    (["birth_date"], 10),
    (["identifier"], 5),
    (["name", "birth_date"], 5),
)
AMR = ('{"amr": ["pwd"]}', '{"amr": ["pwd", "mfa"]}', '{"amr": []}', '{"amr": ["fed"]}')
CREATED = tuple(
    orjson.dumps({"fields": sorted(FIELDS[:n] + FIELDS[-1:])}).decode() for n in range(3, 7)
)
UPDATED = tuple(
    orjson.dumps({"fields": sorted(fields), "version": version}).decode()
    for fields in (["phone"], ["address"], ["email", "phone"], ["family_name"], ["email"])
    for version in (2, 3, 5)
)
_UUID_MASK = ~((0xF << 76) | (0x3 << 62))
_UUID_V4 = (0x4 << 76) | (0x2 << 62)
DENIED = (
    ("/api/patients", "R", "the token lacks read:patients", "GET"),
    ("/api/patients", "C", "the token lacks create:patients", "POST"),
    ("/api/patients/{id}", "U", "the token lacks update:patients", "PATCH"),
    ("/api/patients/{id}", "D", "the token lacks delete:patients", "DELETE"),
    ("/api/audit-events", "R", "the token lacks read:audit", "GET"),
)


def _alnum(rng: random.Random, size: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choices(alphabet, k=size))


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _public_ip(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return f"2a02:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
    first = rng.choice((31, 46, 62, 77, 81, 84, 90, 93, 109, 145, 176, 185, 188, 212, 217))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


@dataclass(frozen=True, slots=True)
class _Session:
    actor: str
    client_id: str
    session_id: str
    token_id: str
    source_ip: int  # asyncpg's inet encoder is 8x faster with an int than with text
    user_agent: str


@dataclass(slots=True)
class _Scope:
    name: str
    sessions: list[_Session]
    patient_texts: list[str]  # asyncpg parses uuid text in C, faster than from uuid.UUID


def make_scopes(count: int, rng: random.Random, exclude: Collection[str] = ()) -> list[_Scope]:
    """`count` scopes with their users' sessions and their patients, none in `exclude`."""
    clients = [_alnum(rng, 32) for _ in range(2)]
    scopes: list[_Scope] = []
    names: set[str] = set(exclude)
    while len(scopes) < count:
        sub = f"auth0|{rng.getrandbits(96):024x}"
        name = f"org:org_{_alnum(rng, 16)}" if len(scopes) % 2 == 0 else f"user:{sub}"
        if name in names:
            continue
        names.add(name)
        users = [sub] if name.startswith("user:") else [
            f"auth0|{rng.getrandbits(96):024x}" for _ in range(rng.randint(1, 30))
        ]  # fmt: skip
        sessions = [
            _Session(
                user,
                clients[0] if rng.random() < 0.85 else clients[1],
                _alnum(rng, 32),
                _alnum(rng, 32),
                int(ipaddress.ip_address(_public_ip(rng))),
                rng.choice(USER_AGENTS),
            )
            for user in users
            for _ in range(rng.randint(1, 4))
        ]
        patients = [str(_uuid(rng)) for _ in range(rng.randint(20, 3000))]
        scopes.append(_Scope(name, sessions, patients))
    return scopes


class Traffic:
    """The synthetic events, in time order: `records(seqs, times, links)` yields COPY records
    (in `COLUMNS` order) and appends to `links` one `(patient_id, seq, recorded_at)` per
    patient an event names."""

    def __init__(self, scopes: Sequence[_Scope], rng: random.Random) -> None:
        self.scopes = scopes
        self.rng = rng
        weights = [rng.paretovariate(1.2) for _ in scopes]  # a few large, many small
        self._scope_cum = list(itertools.accumulate(weights))
        self._action_cum = list(itertools.accumulate(w for _, _, w in MIX))
        self._filter_cum = list(itertools.accumulate(w for _, w in SEARCH_FILTERS))
        self._lag = [dt.timedelta(microseconds=rng.randrange(500, 20_000)) for _ in range(64)]

    def _event_id(self) -> str:
        """A random version-4 UUID, as text (asyncpg parses it in C)."""
        bits = self.rng.getrandbits(128) & _UUID_MASK | _UUID_V4
        return f"{bits:032x}"

    def records(
        self,
        seqs: Sequence[int],
        times: Sequence[dt.datetime],
        links: list[tuple[Any, ...]],
    ) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        count = len(seqs)
        scope_at = rng.choices(self.scopes, cum_weights=self._scope_cum, k=count)
        what_at = rng.choices(MIX, cum_weights=self._action_cum, k=count)
        lags = rng.choices(self._lag, k=count)
        for n in range(count):
            seq, recorded, scope = seqs[n], times[n], scope_at[n]
            action, crud, _ = what_at[n]
            s = scope.sessions[int(rng.random() * len(scope.sessions))]
            outcome, reason, entity_type, entity_id = "success", None, "Patient", None
            patient: str | None = None
            if action == "patient.searched":
                detail = self._search(scope, links, seq, recorded)
            elif action == "user.signed_in":
                entity_type, entity_id, detail = "user", s.actor, AMR[n % len(AMR)]
            elif action == "access.denied":
                route, crud, reason, method = DENIED[int(rng.random() * len(DENIED))]
                outcome, entity_type, entity_id = "denied", "route", route
                if "{id}" in route:
                    patient = scope.patient_texts[int(rng.random() * len(scope.patient_texts))]
                detail = f'{{"method": "{method}", "status": 403, "problem": "forbidden"}}'
            else:
                patient = scope.patient_texts[int(rng.random() * len(scope.patient_texts))]
                entity_id = patient
                if action == "patient.read":
                    detail = '{"via": "get"}'
                elif action == "patient.created":
                    detail = CREATED[n % len(CREATED)]
                else:
                    detail = UPDATED[n % len(UPDATED)]
            if patient is not None:
                links.append((patient, seq, recorded))
            yield (
                seq,
                self._event_id(),
                recorded - lags[n],
                recorded,
                scope.name,
                s.actor,
                s.client_id,
                s.session_id,
                s.token_id,
                s.source_ip,
                s.user_agent,
                action,
                crud,
                outcome,
                reason,
                entity_type,
                entity_id,
                patient,
                f"{rng.getrandbits(128):032x}",
                detail,
                rng.randbytes(32),
                rng.randbytes(32),
            )

    def _search(
        self, scope: _Scope, links: list[tuple[Any, ...]], seq: int, recorded: dt.datetime
    ) -> str:
        rng = self.rng
        filters = SEARCH_FILTERS[
            bisect.bisect(self._filter_cum, rng.random() * self._filter_cum[-1])
        ][0]
        texts = scope.patient_texts
        count = len(texts)
        if not filters:  # the listing, newest first: the first page most often
            pages = (count + PAGE - 1) // PAGE
            page = 0 if rng.random() < 0.6 or pages == 1 else 1 + int(rng.random() * (pages - 1))
            shown = texts[page * PAGE : page * PAGE + PAGE]
            next_page = page > 0
        else:
            wanted = (0, 1, 1, 1, 2, 3, 5)[int(rng.random() * 7)]
            shown = list(dict.fromkeys(texts[int(rng.random() * count)] for _ in range(wanted)))
            next_page = False
        links.extend(zip(shown, itertools.repeat(seq), itertools.repeat(recorded)))
        return orjson.dumps(
            {"filters": filters, "returned": len(shown), "next_page": next_page,
             "patient_ids": shown}
        ).decode()  # fmt: skip
