"""What command families share: the gate, the DMZ clients, the audit trail, the config."""

from __future__ import annotations

from attrs import frozen
from maubot.matrix import MaubotMatrixClient
from mautrix.util.logging import TraceLogger
from yarl import URL

from .audit import AuditLog
from .config import Config
from .confirm import Confirmations
from .direct import DirectMessages
from .dmz import Gateway, Registrar
from .gate import Gate
from .identity import IdentityChecker


@frozen
class Services:
    config: Config
    client: MaubotMatrixClient
    gate: Gate
    identity: IdentityChecker
    audit: AuditLog
    registrar: Registrar
    gateway: Gateway
    confirmations: Confirmations
    direct: DirectMessages
    log: TraceLogger
    webapp_url: URL | None
