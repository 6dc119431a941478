"""A tiny Matrix client over the client-server API, for tests and benchmarks that drive the bot."""

from __future__ import annotations

import itertools
import time
from typing import Any
from urllib.parse import quote

from devstack.process import http_json
from devstack.synapse import Synapse

_txn = itertools.count()


class MatrixUser:
    def __init__(self, hs: Synapse, user_id: str, token: str) -> None:
        self.hs = hs
        self.user_id = user_id
        self.token = token

    @classmethod
    def register(
        cls, hs: Synapse, localpart: str, password: str, *, admin: bool = False
    ) -> MatrixUser:
        token = hs.register_user(localpart, password, admin=admin)
        return cls(hs, hs.user_id(localpart), token)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        for _ in range(20):
            status, result = http_json(method, f"{self.hs.base_url}{path}", body, token=self.token)
            if status != 429:
                break
            # Synapse's invite limits are per room and not all configurable as one block.
            time.sleep(
                result.get("retry_after_ms", 500) / 1000 if isinstance(result, dict) else 0.5
            )
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status} {result}")
        return result

    def create_room(self, *, invite: tuple[str, ...] = (), name: str = "control") -> str:
        body = {"preset": "private_chat", "name": name, "invite": list(invite)}
        return str(self.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"])

    def invite(self, room_id: str, user_id: str) -> None:
        self.call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": user_id})

    def join(self, room_id: str) -> None:
        self.call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {})

    def send(self, room_id: str, body: str, **extra: Any) -> str:
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/"
            f"t{time.monotonic_ns()}-{next(_txn)}"
        )
        content = {"msgtype": "m.text", "body": body, **extra}
        return str(self.call("PUT", path, content)["event_id"])

    def react(self, room_id: str, event_id: str, key: str = "✅") -> str:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.reaction/r{next(_txn)}"
        body = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return str(self.call("PUT", path, body)["event_id"])

    def state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """The room's current state event content as this user's homeserver holds it."""
        status, result = http_json(
            "GET",
            f"{self.hs.base_url}/_matrix/client/v3/rooms/{quote(room_id)}/state/"
            f"{event_type}/{quote(state_key)}",
            token=self.token,
        )
        return result if status == 200 and isinstance(result, dict) else None

    def membership(self, room_id: str, user_id: str) -> str | None:
        content = self.state(room_id, "m.room.member", user_id)
        return str(content["membership"]) if content is not None else None

    def wait_membership(
        self, room_id: str, user_id: str, membership: str = "join", timeout: float = 15.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while self.membership(room_id, user_id) != membership:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user_id} is not {membership} in {room_id}")
            time.sleep(0.05)

    def messages(self, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit={limit}"
        return list(self.call("GET", path)["chunk"])

    def wait_reply(self, room_id: str, event_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The bot's answer to ``event_id`` (a notice replying to it)."""
        return self.wait_event(
            room_id,
            lambda e: (
                e["content"].get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
                == event_id
            ),
            timeout,
        )

    def wait_event(self, room_id: str, match: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.messages(room_id):
                if event.get("type") == "m.room.message" and match(event):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching event in {room_id} within {timeout} s")
            time.sleep(0.03)

    def ask(self, room_id: str, body: str, timeout: float = 15.0) -> str:
        """Send a command and return the body of the bot's reply."""
        event_id = self.send(room_id, body)
        return str(self.wait_reply(room_id, event_id, timeout)["content"]["body"])
