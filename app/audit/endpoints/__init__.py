"""HTTP handlers of the audit part: the log itself (`log`: query, export, verify, a patient's
access report), its signed digests and keys (`digests`), and its Merkle trees' checkpoints and
proofs (`proofs`)."""

from collections.abc import Mapping

from starlette.routing import BaseRoute

from app.audit.endpoints import digests, log, proofs
from app.audit.endpoints.log import ExportFormat


def routes_with(export_formats: Mapping[str, ExportFormat]) -> list[BaseRoute]:
    """Every audit route, the export offering `export_formats` too (app/main.py wires them)."""
    return [*log.routes_with(export_formats), *digests.routes, *proofs.routes]
