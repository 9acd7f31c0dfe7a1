"""The one rule for free text a caller sends, in a body or a query string: no control
characters.

Refused: control characters (a NUL ends a string in Postgres, which refuses it in text),
surrogates, line and paragraph separators, Unicode non-characters, and the bidirectional
embedding, override and isolate controls (which make text display other than it reads,
"Trojan Source"). The joiners ZWJ and ZWNJ, which some scripts need, are allowed. The
messages name the rule, never the value: the value may be personal data.
"""

from __future__ import annotations

import re
import unicodedata

_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# U+202A-U+202E (LRE, RLE, PDF, LRO, RLO) and U+2066-U+2069 (LRI, RLI, FSI, PDI).
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _is_noncharacter(char: str) -> bool:
    code = ord(char)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def control_problem(value: str) -> str | None:
    """Why `value` is refused as text (the rule, never the value), or None when it is not."""
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES or _is_noncharacter(c) for c in value):
        return "must not contain control characters"
    if _BIDI_CONTROLS.search(value):
        return "must not contain bidirectional text controls"
    return None


def refuse_controls(value: str) -> str:
    """`value` unchanged, or `ValueError` with the rule it breaks (a pydantic validator)."""
    problem = control_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value
