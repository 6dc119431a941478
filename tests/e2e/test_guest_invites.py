"""Straight into the room, for real: a token minted with ``--invite`` brings its guest there.

Two Synapses that federate over TLS on loopback: the internal one (staff, the bot, the
project room) behind the ``dmz_api`` gateway, named ``localhost:<gateway port>`` so the DMZ
homeserver reaches it only through the gateway (``devstack.border``), and the DMZ one where
guests register — in Debian's Chromium, on the onboarding page the registrar serves. maubot
runs the plugin; the operator is the gateway's admin too and lets only the DMZ homeserver
federate (``!sbg rule add server_allow``), so each guest's join is a decision of that rule.
The guest is invited over federation exactly once, also when the bot is down while they
register and when it restarts afterwards.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from devstack.border import Gateway, GatewayedSynapse, endpoint
from devstack.browser import ChromiumGuests
from devstack.guests import (
    invited_rooms,
    invites_of,
    join_when_invited,
    project_room,
    sign_in,
    wait_invited,
)
from devstack.stack import BotStack, onboarding_url, token_id, wait_answering
from devstack.synapse import Synapse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotStack]:
    root = tmp_path_factory.mktemp("invites")
    border = GatewayedSynapse(root, name="corp")
    dmz = Synapse(root / "dmz", name="dmz", federation=True)
    config = {
        "registrations": {"poll_interval": 0.3},
        "guest_expiry": {"check_interval": 0.3, "warn_before": "7d"},
    }
    try:
        with (
            border.started(also=(dmz.start,)),
            BotStack(
                root / "stack",
                border.synapse,
                dmz,
                plugin_config=config,
                registrar_config={"expiry_interval": 0.3},
                gateway=border.gateway,
            ) as s,
        ):
            yield s
    finally:
        dmz.stop()


@pytest.fixture(scope="module")
def zero_trust(stack: BotStack) -> str:
    """The id of the enforced rule that lets the DMZ homeserver, and no other, federate."""
    dmz = stack.dmz.server_name
    asked = stack.staff.ask(stack.room, f"!sbg rule add server_allow {dmz}")
    assert f"Federation will be refused from every server except `{dmz}`." in asked
    reply = stack.staff.ask(stack.room, f"!sbg rule add server_allow {dmz} --yes")
    assert "is now version" in reply, reply
    match = re.search(r"Rule `([^`]+)`", reply)
    assert match, reply
    return match.group(1)


@pytest.fixture(scope="module")
def room(stack: BotStack, zero_trust: str) -> str:
    """The project room on the internal homeserver, the bot a member (it may invite)."""
    return project_room(
        stack.staff, stack.bot, alias=f"project{stack.prefix}", moderators=(stack.bot,)
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[ChromiumGuests]:
    with ChromiumGuests() as guests:
        yield guests


def register(browser: ChromiumGuests, stack: BotStack, url: str) -> tuple[str, str]:
    """A new guest registers on the page in Chromium; their localpart and password."""
    localpart = f"guest{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    answer = browser.register(url, localpart, password)
    assert (answer.status, answer.heading) == (200, "Your account is ready"), answer.text
    assert stack.dmz.user_id(localpart) in answer.text
    return localpart, password


def notices_about(stack: BotStack, guest: str) -> list[str]:
    bodies = [
        e["content"]["body"]
        for e in stack.staff.messages(stack.room, limit=200)
        if e.get("type") == "m.room.message"
    ]
    return [body for body in bodies if f"guest {guest} registered" in body]


def test_a_guest_registers_and_lands_in_the_project_room(
    stack: BotStack, room: str, browser: ChromiumGuests, zero_trust: str
) -> None:
    alias = f"#project{stack.prefix}:{stack.internal.server_name}"
    reply = stack.staff.ask(stack.room, f"!token generate --invite {alias} --note project")
    assert f"its guests are invited to `{room}`" in reply
    localpart, password = register(browser, stack, onboarding_url(reply))
    guest = sign_in(stack.dmz, localpart, password)

    wait_invited(guest, room)
    join_when_invited(guest, room)  # over federation, through the gateway, into our room
    stack.staff.wait_membership(room, guest.user_id, "join")

    # The DMZ server asked the gateway to join this room (make_join, then send_join of the
    # guest's membership event), each let through by the zero-trust rule.
    gateway = stack.gateway
    assert isinstance(gateway, Gateway)  # devstack.border's, with the admin-API helpers

    def join_decisions() -> list[dict[str, Any]]:
        rows = gateway.decisions(origin=stack.dmz.server_name, decision="allow")
        return [row for row in rows if row["room"] == room and endpoint(row).endswith("_join")]

    stack.internal.wait_for(
        lambda: {endpoint(row) for row in join_decisions()} == {"make_join", "send_join"},
        what="the gateway's decisions on the guest's join",
    )
    assert {row["rule"] for row in join_decisions()} == {zero_trust}

    notice = stack.staff.wait_event(
        stack.room, lambda e: f"guest {guest.user_id} registered" in e["content"]["body"]
    )
    assert notice["content"]["body"] == (
        f"{stack.staff.user_id}: guest {guest.user_id} registered with token "
        f"`{token_id(reply)}`; invited to `{room}`."
    )
    assert notice["content"]["msgtype"] == "m.notice"
    recent = stack.auditor.ask(stack.room, "!audit --limit 5")
    assert "guest welcome" in recent


def test_a_room_the_bot_is_not_in_mints_nothing(stack: BotStack) -> None:
    elsewhere = project_room(stack.staff)
    before = stack.staff.ask(stack.room, "!token list --all")
    reply = stack.staff.ask(stack.room, f"!token generate --invite {elsewhere}")
    assert reply == (
        f"I am not in `{elsewhere}`, so I could not invite guests there; no token was minted."
    )
    reply = stack.staff.ask(
        stack.room, f"!token generate --invite #nothere:{stack.internal.server_name}"
    )
    assert reply.startswith("No room has the alias ")
    assert stack.staff.ask(stack.room, "!token list --all") == before


def test_a_guest_who_registers_while_the_bot_is_down_is_invited_exactly_once(
    stack: BotStack, room: str, browser: ChromiumGuests
) -> None:
    assert stack.maubot is not None
    reply = stack.staff.ask(stack.room, f"!token generate --uses 2 --invite {room}")
    url = onboarding_url(reply)

    stack.maubot.stop()
    first = sign_in(stack.dmz, *register(browser, stack, url))
    stack.maubot.start()
    wait_answering(stack.staff, stack.room)
    wait_invited(first, room)
    # Declined: were the bot to invite again, the room would hold a second invite event
    # (Synapse folds a repeated invite of someone still invited into the first).
    first.call("POST", f"/_matrix/client/v3/rooms/{quote(room)}/leave", {})
    stack.staff.wait_membership(room, first.user_id, "leave")

    second = sign_in(stack.dmz, *register(browser, stack, url))
    wait_invited(second, room)
    stack.staff.wait_event(
        stack.room, lambda e: f"guest {second.user_id} registered" in e["content"]["body"]
    )

    # Once more through a restart: the bot re-reads the recent feed and does nothing twice.
    stack.maubot.restart()
    wait_answering(stack.staff, stack.room)
    third = sign_in(stack.dmz, *register(browser, stack, onboarding_url(
        stack.staff.ask(stack.room, f"!token generate --invite {room}")
    )))  # fmt: skip
    wait_invited(third, room)
    stack.staff.wait_event(
        stack.room, lambda e: f"guest {third.user_id} registered" in e["content"]["body"]
    )
    for guest in (first, second, third):
        assert invites_of(stack.staff, room, guest.user_id) == 1, guest.user_id
        assert len(notices_about(stack, guest.user_id)) == 1, guest.user_id
    assert all(re.search(r"`[0-9a-f]{12}`", n) for n in notices_about(stack, first.user_id))


def test_the_sponsor_can_be_told_by_direct_message(
    stack: BotStack, room: str, browser: ChromiumGuests
) -> None:
    reply = stack.staff.ask(stack.room, f"!token generate --dm --invite {room}")
    assert "direct message" in reply
    stack.staff.hs.wait_for(
        lambda: invited_rooms(stack.staff)[0], what="the bot's direct-message invite"
    )
    [direct] = invited_rooms(stack.staff)[0]
    stack.staff.join(direct)
    dm = stack.staff.wait_event(direct, lambda e: "/register?token=" in e["content"]["body"])
    guest = sign_in(stack.dmz, *register(browser, stack, onboarding_url(dm["content"]["body"])))
    wait_invited(guest, room)
    told = stack.staff.wait_event(
        direct, lambda e: f"guest {guest.user_id} registered" in e["content"]["body"]
    )
    assert f"invited to `{room}`" in told["content"]["body"]
    assert notices_about(stack, guest.user_id) == []


def test_a_guest_is_warned_of_extended_and_removed_when_their_time_is_up(
    stack: BotStack, room: str, browser: ChromiumGuests
) -> None:
    reply = stack.staff.ask(stack.room, f"!token generate --invite {room} --guest-expires 10s")
    assert "guests keep their account for 10s" in reply
    guest = sign_in(stack.dmz, *register(browser, stack, onboarding_url(reply)))
    wait_invited(guest, room)
    join_when_invited(guest, room)
    stack.staff.wait_membership(room, guest.user_id, "join")

    def warnings() -> list[str]:
        return [
            e["content"]["body"]
            for e in stack.staff.messages(stack.room, limit=200)
            if e.get("type") == "m.room.message"
            and f"guest {guest.user_id} expires" in e["content"]["body"]
        ]

    stack.internal.wait_for(lambda: warnings(), what="the expiry warning")
    assert f"`!guest extend {guest.user_id} 30d` lets them stay longer." in warnings()[0]
    extended = stack.staff.ask(stack.room, f"!guest extend {guest.user_id} 5s")
    assert extended.startswith(f"Guest {guest.user_id} now expires ")
    stack.internal.wait_for(lambda: len(warnings()) == 2, what="the warning of the new date")

    expired = stack.staff.wait_event(
        stack.room,
        lambda e: f"guest {guest.user_id}'s access expired" in e["content"]["body"],
        timeout=30,
    )
    assert "the DMZ account is deactivated" in expired["content"]["body"]
    stack.staff.wait_membership(room, guest.user_id, "leave")
    status, user = stack.dmz.admin("GET", f"/_synapse/admin/v2/users/{guest.user_id}")
    assert status == 200 and user["deactivated"] is True
    late = stack.staff.ask(stack.room, f"!guest extend {guest.user_id} 5s")
    assert late == f"{guest.user_id}: {guest.user_id} is already deactivated."
    listing = stack.staff.ask(stack.room, "!guest list --all")
    assert f"{guest.user_id} deactivated" in listing


def test_one_command_offboards_a_guest_and_a_whole_project(
    stack: BotStack, room: str, browser: ChromiumGuests
) -> None:
    second_room = project_room(stack.staff, stack.bot, moderators=(stack.bot,))
    reply = stack.staff.ask(
        stack.room,
        f"!token generate --uses 3 --project apollo --invite {room} --invite {second_room}",
    )
    assert "project `apollo`" in reply
    url = onboarding_url(reply)
    guests = [sign_in(stack.dmz, *register(browser, stack, url)) for _ in range(3)]
    for guest in guests:
        for target in (room, second_room):
            wait_invited(guest, target)
        join_when_invited(guest, room)  # the second room's invite stays pending
        stack.staff.wait_membership(room, guest.user_id, "join")
    alone, *project = guests

    asked = stack.staff.ask(stack.room, f"!guest offboard {alone.user_id}")
    assert asked.startswith(f"Offboard guest {alone.user_id}?")
    done = stack.staff.ask(stack.room, f"!guest offboard {alone.user_id} --yes")
    assert done.startswith(f"Guest {alone.user_id}: DMZ account deactivated; removed from ")
    assert f"`{room}`" in done and f"`{second_room}`" in done
    for target in (room, second_room):
        assert stack.staff.membership(target, alone.user_id) in ("leave", None)

    asked = stack.staff.ask(stack.room, "!guest offboard --project apollo")
    assert asked.startswith("Offboard the 2 active guests of project `apollo`")
    assert all(g.user_id in asked for g in project)
    done = stack.staff.ask(stack.room, "!guest offboard --project apollo --yes")
    assert done.startswith("Offboarded 2 of 2 guests:")
    for guest in project:
        assert f"Guest {guest.user_id}: DMZ account deactivated; removed from " in done
        stack.staff.wait_membership(room, guest.user_id, "leave")
        status, user = stack.dmz.admin("GET", f"/_synapse/admin/v2/users/{guest.user_id}")
        assert status == 200 and user["deactivated"] is True
    again = stack.staff.ask(stack.room, "!guest offboard --project apollo --yes")
    assert again == "Project `apollo` has no active guests."
    unknown = stack.staff.ask(stack.room, f"!guest offboard @nobody:{stack.dmz.server_name} --yes")
    assert unknown == f"@nobody:{stack.dmz.server_name} is not a known guest; nothing was done."
