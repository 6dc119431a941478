"""The one gate every command passes, and the audit record every command leaves.

Before a handler runs: the room must be a control room, the sender must hold a role the
command accepts, and for privileged commands the sender's account must be confirmed
active on the internal homeserver, live. Anything unconfirmed is refused. Whatever
happens -- allowed, refused, failed, bad syntax -- ends in exactly one audit entry.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, Protocol

import attrs
from attrs import define, frozen
from maubot import MessageEvent
from mautrix.types import EventID, RoomID, UserID

from . import fmt
from .audit import AuditLog, AuditRecord, Outcome
from .config import Config
from .dmz import Acting, DmzError, DmzUnavailable
from .identity import AccountState, AccountStatus, IdentityChecker
from .spelling import spell
from .syntax import BadSyntax

Reply = Callable[[str], Awaitable[EventID]]


class Role(StrEnum):
    OPERATOR = "operator"
    GATEWAY_ADMIN = "gateway_admin"
    AUDITOR = "auditor"


def user_matches(pattern: str, user_id: str) -> bool:
    """A glob matched against the localpart and the server name separately.

    ``@*:corp.example`` must not match ``@x:evil.example:corp.example``, so ``*`` never
    crosses the first colon.
    """
    pattern_local, _, pattern_server = pattern.partition(":")
    local, _, server = user_id.partition(":")
    return fnmatch.fnmatchcase(local, pattern_local) and fnmatch.fnmatchcase(server, pattern_server)


@frozen
class CommandSpec:
    """What a command is called, which roles may run it, and what a DMZ outage leaves undone."""

    # Canonical ("token generate", "bastion help"); spelling.spell says how it is typed.
    name: str
    roles: tuple[Role, ...] = ()
    # Said when dmz_api does not answer: "nothing was <effect>".
    effect: str | None = None
    # A family root that only lists its subcommands is not listed by `bastion help` itself.
    listed: bool = True

    def allows(self, roles: frozenset[Role]) -> bool:
        return not self.roles or any(role in roles for role in self.roles)

    @property
    def role_text(self) -> str:
        return " or ".join(role.value for role in self.roles)


class Refused(Exception):
    """A handler turns the request down; ``message`` is shown, ``detail`` is audited."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail


class Failed(Exception):
    """A handler could not do what was asked; ``message`` is shown, ``detail`` is audited."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail


@define
class Context:
    """One gated invocation, handed to the handler."""

    spec: CommandSpec
    room_id: RoomID
    event_id: EventID
    sender: UserID
    request_id: str
    roles: frozenset[Role]
    status: AccountStatus | None
    reply: Reply
    args: dict[str, Any]
    # The thread the command was sent in, so a later confirmation answers there too.
    thread_root: EventID | None = None
    detail: str = ""
    outcome: Outcome = Outcome.OK

    @property
    def acting(self) -> Acting:
        return Acting(self.sender, self.request_id)

    def note(self, detail: str) -> None:
        self.detail = f"{self.detail}; {detail}" if self.detail else detail


@frozen
class Decision:
    allowed: bool
    roles: frozenset[Role]
    status: AccountStatus | None = None
    message: str = ""
    detail: str = ""


Handler = Callable[[Context], Awaitable[None]]


class Gate:
    def __init__(
        self, config: Config, identity: IdentityChecker, audit: AuditLog, log: logging.Logger
    ) -> None:
        self.config = config
        self.identity = identity
        self.audit = audit
        self.log = log

    def roles_of(self, user_id: str) -> frozenset[Role]:
        return frozenset(
            role
            for role in Role
            if any(user_matches(p, user_id) for p in self.config.role_patterns(role.value))
        )

    async def check(self, spec: CommandSpec, room_id: RoomID, sender: UserID) -> Decision:
        roles = self.roles_of(sender)
        if room_id not in self.config.control_rooms:
            return Decision(
                False,
                roles,
                message="Commands are accepted only in a control room.",
                detail="not a control room",
            )
        if not spec.allows(roles):
            return Decision(
                False,
                roles,
                message=f"You need the {spec.role_text} role to use "
                f"{fmt.code(spell(self.config, spec.name))}.",
                detail=f"missing role {spec.role_text}",
            )
        if not spec.roles:
            return Decision(True, roles)
        status = await self.identity.status(sender, [room_id])
        if status.state is AccountState.UNCONFIRMED:
            return Decision(
                False,
                roles,
                status,
                message="Your account status could not be confirmed, so nothing was done.",
                detail=f"status unconfirmed: {status.reason}",
            )
        if not status.active:
            return Decision(
                False,
                roles,
                status,
                message=f"Your account is {status.state.value}, so nothing was done.",
                detail=f"account {status.state.value}",
            )
        return Decision(True, roles, status)

    async def run(
        self,
        spec: CommandSpec,
        *,
        room_id: RoomID,
        event_id: EventID,
        sender: UserID,
        args: Mapping[str, Any],
        reply: Reply,
        handler: Handler,
        bad_syntax: BadSyntax | None = None,
        thread_root: EventID | None = None,
    ) -> Outcome:
        """Check, run, answer and audit one command; returns how it ended."""
        request_id = secrets.token_hex(8)
        outcome, detail, message = Outcome.FAILED, "cancelled", ""
        try:
            decision = await self.check(spec, room_id, sender)
            if not decision.allowed:
                outcome, detail, message = Outcome.REFUSED, decision.detail, decision.message
            elif bad_syntax is not None:
                outcome, detail = Outcome.REFUSED, f"bad syntax: {bad_syntax.message}"
                usage = f"{spell(self.config, spec.name)} {bad_syntax.usage}".strip()
                message = f"{fmt.md(bad_syntax.message)}  \n**Usage:** {fmt.code(usage)}"
            else:
                ctx = Context(
                    spec=spec,
                    room_id=room_id,
                    event_id=event_id,
                    sender=sender,
                    request_id=request_id,
                    roles=decision.roles,
                    status=decision.status,
                    reply=reply,
                    args=dict(args),
                    thread_root=thread_root,
                )
                outcome, detail, message = await self._invoke(spec, ctx, handler)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.exception("Gate failed on %s [%s]", spec.name, request_id)
            outcome, detail = Outcome.FAILED, f"internal error: {type(e).__name__}"
            message = f"Something went wrong; nothing was done (request `{request_id}`)."
        finally:
            await self._record(
                AuditRecord(
                    room_id=room_id,
                    event_id=event_id,
                    sender=sender,
                    command=spec.name,
                    args=args,
                    outcome=outcome,
                    detail=detail,
                    request_id=request_id,
                )
            )
        if message:
            try:
                await reply(message)
            except Exception:
                self.log.exception("Could not answer %s [%s]", spec.name, request_id)
        return outcome

    async def _invoke(
        self, spec: CommandSpec, ctx: Context, handler: Handler
    ) -> tuple[Outcome, str, str]:
        try:
            await handler(ctx)
            return ctx.outcome, ctx.detail, ""
        except Refused as e:
            return Outcome.REFUSED, _join(ctx.detail, e.detail), e.message
        except Failed as e:
            return Outcome.FAILED, _join(ctx.detail, e.detail), e.message
        except asyncio.CancelledError:
            raise
        except Exception as e:
            detail, message = self._failure(spec, ctx, e)
            return Outcome.FAILED, _join(ctx.detail, detail), message

    def _failure(self, spec: CommandSpec, ctx: Context, error: Exception) -> tuple[str, str]:
        """What to audit and what to say when a handler raised."""
        # Once the handler noted something done, "nothing was created" would be untrue.
        effect = None if ctx.detail else spec.effect
        tail = f"; nothing was {effect}" if effect else ""
        if isinstance(error, DmzUnavailable):
            return f"{error.role} unavailable: {error.reason}", error.sentence(effect)
        if isinstance(error, DmzError):
            if error.status >= 500:
                message = f"The DMZ service failed (HTTP {error.status}){tail}."
            else:
                message = f"The DMZ service refused the request: {fmt.md(error.error)}"
            return f"{error.status} {error.errcode}", message
        self.log.error("%s failed [%s]", spec.name, ctx.request_id, exc_info=error)
        return (
            f"internal error: {type(error).__name__}",
            f"Something went wrong{tail} (request `{ctx.request_id}`).",
        )

    async def _record(self, record: AuditRecord) -> None:
        try:
            await self.audit.append(record)
        except Exception:
            self.log.exception(
                "Could not write the audit entry for %s [%s]", record.command, record.request_id
            )


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


class GatedFamily(Protocol):
    gate: Gate


GatedHandler = Callable[[Any, MessageEvent, Context, Any], Awaitable[None]]
MaubotHandler = Callable[[Any, MessageEvent, Any], Awaitable[None]]


def audit_args(args: Any) -> dict[str, Any]:
    """The parsed arguments as the audit trail keeps them."""
    if isinstance(args, BadSyntax):
        return {"raw": args.raw[:200]}
    if attrs.has(type(args)):
        return attrs.asdict(args)
    return {}


def gated(
    name: str, *roles: Role, effect: str | None = None, listed: bool = True
) -> Callable[[GatedHandler], MaubotHandler]:
    """Run a command handler through the gate: ``handler(self, evt, ctx, args)``.

    Use under ``@arguments(...)``, so that bad syntax is answered only after the checks.
    """
    spec = CommandSpec(name, tuple(roles), effect, listed)

    def decorate(fn: GatedHandler) -> MaubotHandler:
        @functools.wraps(fn)
        async def wrapper(self: GatedFamily, evt: MessageEvent, args: Any = None) -> None:
            async def handler(ctx: Context) -> None:
                await fn(self, evt, ctx, args)

            await self.gate.run(
                spec,
                room_id=evt.room_id,
                event_id=evt.event_id,
                sender=evt.sender,
                args=audit_args(args),
                reply=evt.reply,
                handler=handler,
                bad_syntax=args if isinstance(args, BadSyntax) else None,
                thread_root=thread_of(evt),
            )

        wrapper.__bastion_command__ = spec  # type: ignore[attr-defined]
        return wrapper

    return decorate


def thread_of(evt: MessageEvent) -> EventID | None:
    get_parent = getattr(evt.content, "get_thread_parent", None)
    return get_parent() if callable(get_parent) else None


def command_spec(fn: object) -> CommandSpec | None:
    spec = getattr(fn, "__bastion_command__", None)
    return spec if isinstance(spec, CommandSpec) else None
