"""Each process's cache of live sessions, by cookie hash, kept true by LISTEN/NOTIFY.

A session is cached decrypted; the service decides how long an entry may be used. Every
notification (app/session/listener.py) drops the hashes it names, or everything, and bumps
`generation`: a row read before a notification arrived is not cached (`remember` is given the
generation from before the read). While the listener is down, nothing is cached.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from app.session.listener import SessionListener

CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    """A live session, decrypted. Holds tokens: never log or return one."""

    id: uuid.UUID
    cookie_hash: bytes
    sub: str
    sid: str | None
    scope: str
    access_token: str
    access_expires_at: float
    id_token: str
    refresh_token: bytes | None  # still sealed: only a refresh or a logout opens it
    last_seen_at: float
    idle_expires_at: float
    absolute_expires_at: float
    dpop_key: bytes | None = None  # sealed; the tokens are bound to it (SESSION_DPOP)

    def idle_expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.idle_expires_at, dt.UTC)

    def absolute_expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.absolute_expires_at, dt.UTC)


class SessionCache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.generation = 0
        self._entries: OrderedDict[bytes, Session] = OrderedDict()
        self.listener = SessionListener(self.on_change)

    def __contains__(self, cookie_hash: bytes) -> bool:
        return cookie_hash in self._entries

    def get(self, cookie_hash: bytes) -> Session | None:
        found = self._entries.get(cookie_hash)
        if found is not None:
            self._entries.move_to_end(cookie_hash)
        return found

    def remember(self, session: Session, generation: int) -> None:
        if generation != self.generation or not self.listener.listening:
            return  # a change may have been announced while this was read: use it once
        self._entries[session.cookie_hash] = session
        self._entries.move_to_end(session.cookie_hash)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, cookie_hash: bytes) -> None:
        self._entries.pop(cookie_hash, None)

    def drop_sessions(self, session_ids: set[uuid.UUID]) -> None:
        for hashed in [h for h, s in self._entries.items() if s.id in session_ids]:
            del self._entries[hashed]

    def on_change(self, hashes: list[str] | None) -> None:
        self.generation += 1
        if hashes is None:
            self._entries.clear()
            return
        for text in hashes:
            try:
                self._entries.pop(bytes.fromhex(text), None)
            except ValueError:
                continue
