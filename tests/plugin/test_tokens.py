"""``!token generate|list|show|revoke`` against a fake registrar."""

from __future__ import annotations

from typing import Any

import pytest
from mautrix.types import MessageType

from plugin.dmz import DmzUnavailable

from .conftest import CONTROL, STAFF, Chat
from .fakes import PUBLIC_URL, REGISTRAR_KEY, FakeHomeserver, FakeRegistrar


async def test_generate_with_defaults(chat: Chat, registrar: FakeRegistrar) -> None:
    event_id = await chat.send("!token generate")
    [call] = registrar.requests
    assert (call.method, call.path) == ("POST", "/v1/tokens")
    assert call.body == {"uses": 1, "expires_in": 86400, "note": "", "guest_expires_in": 7776000}
    assert call.headers["Authorization"] == f"Bearer {REGISTRAR_KEY}"
    assert call.headers["X-Acting-User"] == STAFF
    assert call.headers["Idempotency-Key"] == event_id
    [token_id] = registrar.tokens
    reply = chat.last
    assert reply.msgtype == MessageType.NOTICE
    assert reply.relates_to.in_reply_to.event_id == event_id
    assert f"Token `{token_id}`: 1 use, expires " in reply.body
    assert "(in 1d)" in reply.body
    url = f"{PUBLIC_URL}/register?token={registrar.tokens[token_id]['plaintext']}"
    assert url in reply.body
    assert f'href="{url}"' in reply.formatted_body
    [entry] = await chat.audit()
    assert (entry.command, entry.outcome, entry.detail) == (
        "token generate",
        "ok",
        f"token {token_id}",
    )
    assert registrar.tokens[token_id]["plaintext"] not in entry.args + entry.detail


async def test_generate_with_options(chat: Chat, registrar: FakeRegistrar) -> None:
    await chat.send(
        '!token generate --note Partner onboarding: "ACME" --uses 3 --expires 7d'
        " --guest-expires 30d"
    )
    [call] = registrar.requests
    assert call.body == {
        "uses": 3,
        "expires_in": 604800,
        "note": "Partner onboarding: ACME",
        "guest_expires_in": 30 * 86400,
    }
    assert "3 uses" in chat.last.body and "(in 7d)" in chat.last.body
    assert "guests keep their account for 30d" in chat.last.body


async def test_generate_note_is_escaped(chat: Chat, registrar: FakeRegistrar) -> None:
    await chat.send("!token generate --note <b>x</b> *y* [z](https://evil.example)")
    await chat.send("!token list")
    html = chat.last.formatted_body
    assert "<b>" not in html and "<em>" not in html and 'evil.example"' not in html
    assert "&lt;b&gt;x&lt;/b&gt; *y* [z](https://evil.example)" in html


async def test_redelivered_command_mints_once(chat: Chat, registrar: FakeRegistrar) -> None:
    await chat.send("!token generate", event_id="$same:corp.example")
    first = chat.last.body
    await chat.send("!token generate", event_id="$same:corp.example")
    assert registrar.minted == 1
    assert chat.last.body == first


async def test_generate_by_direct_message(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    await chat.send("!token generate --dm")
    [token_id] = registrar.tokens
    dm_reply, room_reply = chat.test_bot.responded[-2:]
    [room] = homeserver.created_rooms
    assert room["is_direct"] is True and room["invite"] == [STAFF]
    assert dm_reply.room_id == room["room_id"]
    assert "/register?token=" in dm_reply.content.body
    assert room_reply.room_id == CONTROL
    assert "/register?token=" not in room_reply.content.body
    assert token_id in room_reply.content.body and "direct message" in room_reply.content.body
    [entry] = await chat.audit()
    assert entry.detail == f"token {token_id}; url sent by direct message"

    await chat.send("!token generate --dm")
    assert len(homeserver.created_rooms) == 1, "the direct room is reused"
    assert chat.test_bot.responded[-2].room_id == room["room_id"]


async def test_direct_room_shared_with_someone_else_is_not_reused(
    chat: Chat, homeserver: FakeHomeserver
) -> None:
    await chat.send("!token generate --dm")
    room_id = homeserver.created_rooms[0]["room_id"]
    homeserver.members[(room_id, STAFF)] = "join"
    homeserver.members[(room_id, "@eve:corp.example")] = "join"
    await chat.send("!token generate --dm")
    assert len(homeserver.created_rooms) == 2


async def test_failed_direct_message_revokes_the_token(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    homeserver.create_room_fails = True
    reply = await chat.ask("!token generate --dm")
    [token] = registrar.tokens.values()
    assert token["status"] == "revoked"
    assert reply == f"I could not send you a direct message, so token `{token['id']}` was revoked."
    [entry] = await chat.audit()
    assert entry.outcome == "failed"
    assert "token revoked" in entry.detail


async def test_dmz_timeout(chat: Chat, registrar: FakeRegistrar, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["dmz.timeout"] = "1s"
    registrar.delay = 1.5
    reply = await chat.ask("!token generate")
    assert reply == "The DMZ service did not answer in 1 s; nothing was created."
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("failed", "registrar unavailable: timeout")
    assert entry.request_id == registrar.requests[0].headers["X-Request-Id"]


def test_the_timeout_sentence_names_the_configured_wait() -> None:
    error = DmzUnavailable("registrar", 10.0, "timeout")
    assert error.sentence("created") == (
        "The DMZ service did not answer in 10 s; nothing was created."
    )


async def test_dmz_down(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["dmz.registrar_url"] = "http://127.0.0.1:9"
    reply = await chat.ask("!token generate")
    assert reply == "The DMZ service did not answer in 10 s; nothing was created."
    [entry] = await chat.audit()
    assert entry.outcome == "failed"
    assert entry.detail.startswith("registrar unavailable: ")


async def test_dmz_refusal_is_relayed(chat: Chat, registrar: FakeRegistrar) -> None:
    registrar.fail = (400, {"errcode": "M_INVALID_PARAM", "error": "uses must be <b>small</b>"})
    reply = await chat.ask("!token generate")
    assert reply == "The DMZ service refused the request: uses must be <b>small</b>"
    assert "<b>" not in chat.last.formatted_body
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("failed", "400 M_INVALID_PARAM")


@pytest.mark.parametrize("payload", ["<html>bad gateway</html>", {"errcode": "M_UNKNOWN"}])
async def test_dmz_server_error(chat: Chat, registrar: FakeRegistrar, payload: Any) -> None:
    registrar.fail = (502, payload)
    reply = await chat.ask("!token generate")
    assert reply == "The DMZ service failed (HTTP 502); nothing was created."


async def test_wrong_api_key(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["dmz.api_key"] = "wrong"
    reply = await chat.ask("!token list")
    assert reply == "The DMZ service refused the request: Unknown API key"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--uses", "--uses needs a value."),
        ("--uses two", "--uses must be a whole number from 1 to 1000."),
        ("--uses 1001", "--uses must be a whole number from 1 to 1000."),
        ("--expires soon", "--expires must be a duration such as 30m, 24h or 7d."),
        ("--note", "--note needs a value."),
        ('--note "unclosed', "A quotation mark is not closed."),
        ("--dm=yes", "--dm takes no value."),
        ("--frob", "Unknown option --frob."),
        ("extra", "Unexpected 'extra'."),
        ("--uses 1 --uses 2", "--uses is given twice."),
    ],
)
async def test_generate_bad_syntax(
    chat: Chat, registrar: FakeRegistrar, args: str, message: str
) -> None:
    reply = await chat.ask(f"!token generate {args}")
    assert reply.startswith(message)
    assert "Usage:" in reply
    assert registrar.requests == []


async def test_phone_dashes_are_understood(chat: Chat, registrar: FakeRegistrar) -> None:
    await chat.send("!token generate \u2014uses 2 \u2013dm")
    assert registrar.requests[0].body["uses"] == 2


async def test_list(chat: Chat, registrar: FakeRegistrar) -> None:
    mine = registrar.add_token(STAFF, note="for ACME")
    registrar.add_token("@bob:corp.example")
    used = registrar.add_token(STAFF, status="used")
    reply = await chat.ask("!token list")
    assert registrar.requests[-1].query == {"status": "active"}
    assert reply.startswith("Open tokens (2):")
    assert mine in reply and used not in reply and "for ACME" in reply

    reply = await chat.ask("!token list --all --mine")
    assert registrar.requests[-1].query == {"sponsor": STAFF}
    assert reply.startswith("Your tokens (2):")
    assert used in reply


async def test_list_is_capped(chat: Chat, registrar: FakeRegistrar) -> None:
    for _ in range(35):
        registrar.add_token(STAFF)
    reply = await chat.ask("!token list")
    assert "… and 5 more" in reply


async def test_list_empty(chat: Chat) -> None:
    assert await chat.ask("!token list --mine") == "Your open tokens: none."


async def test_show(chat: Chat, registrar: FakeRegistrar) -> None:
    token_id = registrar.add_token(STAFF, note="n")
    reply = await chat.ask(f"!token show {token_id}")
    assert reply.startswith(f"Token `{token_id}` active, 0/1 used, expires ")
    assert "Created " in reply
    assert registrar.requests[-1].path == f"/v1/tokens/{token_id}"


async def test_show_unknown(chat: Chat) -> None:
    assert await chat.ask("!token show 0123456789ab") == "No token has the id `0123456789ab`."
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("failed", "not found")


async def test_show_needs_a_valid_id(chat: Chat, registrar: FakeRegistrar) -> None:
    assert (await chat.ask("!token show")).startswith("The token id is missing.")
    assert (await chat.ask("!token show ../../etc")).startswith("A token id is letters")
    assert registrar.requests == []


async def test_revoke(chat: Chat, registrar: FakeRegistrar) -> None:
    token_id = registrar.add_token("@bob:corp.example")
    assert await chat.ask(f"!token revoke {token_id}") == f"Token `{token_id}` is revoked."
    assert registrar.tokens[token_id]["status"] == "revoked"
    [entry] = await chat.audit()
    assert entry.detail == f"token {token_id} revoked"
    assert entry.parsed_args == {"token_id": token_id}


async def test_revoke_unknown_and_used(chat: Chat, registrar: FakeRegistrar) -> None:
    assert await chat.ask("!token revoke 0123456789ab") == "No token has the id `0123456789ab`."
    used = registrar.add_token(STAFF, status="used")
    reply = await chat.ask(f"!token revoke {used}")
    assert reply == f"The DMZ service refused the request: Token {used} is already used"


async def test_revoke_timeout_says_nothing_changed(
    chat: Chat, registrar: FakeRegistrar, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["dmz.timeout"] = "1s"
    token_id = registrar.add_token(STAFF)
    registrar.delay = 1.5
    reply = await chat.ask(f"!token revoke {token_id}")
    assert reply == "The DMZ service did not answer in 1 s; nothing was changed."


async def test_unexpected_error_is_not_shown(
    chat: Chat, registrar: FakeRegistrar, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(chat.plugin.services.registrar, "tokens", explode)
    reply = await chat.ask("!token list")
    assert "secret" not in reply
    [entry] = await chat.audit()
    assert reply == f"Something went wrong (request `{entry.request_id}`)."
    assert (entry.outcome, entry.detail) == ("failed", "internal error: RuntimeError")
