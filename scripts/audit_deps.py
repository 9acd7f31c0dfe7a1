"""Audit the installed dependencies against the vulnerability data PyPI publishes.

`scripts/audit-deps` runs this over every distribution in `.venv` (the runtime and the
development dependencies, as `pip freeze` lists them). PyPI's JSON API carries, for each
project, the known vulnerabilities of its latest release (the PyPA advisory database, the
same data pip-audit reads). pip-audit asks the per-version endpoint, which mirrors and closed
networks often do not serve; the project endpoint they do serve. So:

- a distribution installed at its latest release is judged by that list;
- one installed at an older release cannot be judged from it, and counts as unaudited;
- a fetch that fails counts as unaudited too: an audit that could not look is no pass.

Any vulnerability or unaudited distribution fails the run (exit 1), unless
`scripts/audit-exceptions.txt` names it with a reason: a vulnerability by its id or any
alias, an older release as `name==version`. An exception that no longer matches anything is
reported, so the file does not collect dead entries.

Environment: `PYPI_JSON_URL` (default https://pypi.org/pypi).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXCEPTIONS = ROOT / "scripts" / "audit-exceptions.txt"


def normalize(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Exceptions:
    """Accepted findings, each with the reason written beside it in the file."""

    vulnerabilities: Mapping[str, str]  # id -> reason
    releases: Mapping[str, str]  # normalized "name==version" -> reason

    @classmethod
    def parse(cls, text: str) -> Exceptions:
        vulns: dict[str, str] = {}
        releases: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, reason = line.partition(" ")
            if not reason.strip():
                raise ValueError(f"line {number}: an exception needs a reason after its id")
            if "==" in key:
                name, _, version = key.partition("==")
                releases[f"{normalize(name)}=={version}"] = reason.strip()
            else:
                vulns[key] = reason.strip()
        return cls(vulns, releases)


@dataclass
class Report:
    vulnerable: list[str] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    used_exceptions: set[str] = field(default_factory=set)

    @property
    def failed(self) -> bool:
        return bool(self.vulnerable or self.unaudited)


def judge(
    name: str,
    version: str,
    project: Mapping[str, Any] | None,
    exceptions: Exceptions,
    report: Report,
    error: str = "",
) -> None:
    """Judge one installed distribution by its project's JSON (None when the fetch failed)."""
    label = f"{name}=={version}"
    if project is None:
        report.unaudited.append(f"{label}: no vulnerability data ({error or 'fetch failed'})")
        return
    latest = str(project.get("info", {}).get("version", ""))
    if version != latest:
        key = f"{normalize(name)}=={version}"
        if key in exceptions.releases:
            report.used_exceptions.add(key)
            reason = exceptions.releases[key]
            report.accepted.append(f"{label}: not the latest ({latest}); {reason}")
        else:
            report.unaudited.append(
                f"{label}: not the latest release ({latest}), so PyPI's data does not cover it"
            )
        return
    for vuln in project.get("vulnerabilities") or []:
        if vuln.get("withdrawn"):
            continue
        ids = [str(vuln.get("id", "")), *map(str, vuln.get("aliases") or [])]
        fixed = ", ".join(vuln.get("fixed_in") or []) or "no fixed release"
        known = next((i for i in ids if i in exceptions.vulnerabilities), None)
        if known is not None:
            report.used_exceptions.update(i for i in ids if i in exceptions.vulnerabilities)
            reason = exceptions.vulnerabilities[known]
            report.accepted.append(f"{label}: {ids[0]} accepted; {reason}")
        else:
            report.vulnerable.append(f"{label}: {' / '.join(ids)} (fixed in: {fixed})")


def installed(python: str) -> list[tuple[str, str]]:
    """The distributions `python`'s environment holds, as pip freeze pins them."""
    out = subprocess.run(  # noqa: S603 (our own venv's python, or a path given by hand)
        [python, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = []
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins.append((name.strip(), version.strip()))
    return pins


def fetch(base: str, name: str) -> tuple[dict[str, Any] | None, str]:
    url = f"{base.rstrip('/')}/{normalize(name)}/json"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (https or a mirror)
            return json.load(response), ""
    except Exception as exc:  # any failure to look is reported, never passed
        return None, f"{type(exc).__name__}: {exc}"


def audit(
    pins: Iterable[tuple[str, str]], exceptions: Exceptions, base: str, workers: int = 8
) -> Report:
    pins = list(pins)
    report = Report()
    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(lambda pin: fetch(base, pin[0]), pins))
    for (name, version), (project, error) in zip(pins, answers, strict=True):
        judge(name, version, project, exceptions, report, error)
    return report


def main() -> int:
    python = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / ".venv" / "bin" / "python")
    base = os.environ.get("PYPI_JSON_URL", "https://pypi.org/pypi")
    exceptions = Exceptions.parse(EXCEPTIONS.read_text() if EXCEPTIONS.exists() else "")
    pins = installed(python)
    report = audit(pins, exceptions, base)
    for line in report.accepted:
        print(f"accepted    {line}")
    stale = (set(exceptions.vulnerabilities) | set(exceptions.releases)) - report.used_exceptions
    for key in sorted(stale):
        print(f"stale       {key}: no longer matches anything; remove it from {EXCEPTIONS.name}")
    for line in report.unaudited:
        print(f"UNAUDITED   {line}")
    for line in report.vulnerable:
        print(f"VULNERABLE  {line}")
    audited = len(pins) - len(report.unaudited)
    print(
        f"{len(pins)} distributions, {audited} audited, {len(report.vulnerable)} vulnerable, "
        f"{len(report.unaudited)} unaudited, {len(report.accepted)} accepted with a reason"
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
