"""``!guest offboard``: rooms, then the DMZ account, then kicks, reported room by room."""

from __future__ import annotations

from .conftest import BOT, Chat
from .fakes import FakeHomeserver, FakeRegistrar

GUEST = "@guest:dmz.example"
OTHER = "@other:dmz.example"
ROOMS = ("!a:corp.example", "!b:corp.example", "!c:corp.example")


def seat(homeserver: FakeHomeserver, *guests: str) -> None:
    """The bot in every room; the guests joined in a and b, invited in c."""
    for room in ROOMS:
        homeserver.members[(room, BOT)] = "join"
        for guest in guests:
            homeserver.members[(room, guest)] = "invite" if room == ROOMS[2] else "join"


async def test_offboard_asks_then_does_everything_and_says_so(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    registrar.add_guest(GUEST, "@alice:corp.example")
    seat(homeserver, GUEST)
    homeserver.no_kick = {ROOMS[1]}
    asked = await chat.ask(f"!guest offboard {GUEST}")
    assert asked.startswith(f"Offboard guest {GUEST}?")
    assert homeserver.kicks == [] and registrar.guests[GUEST]["status"] == "active"

    done = await chat.ask(f"!guest offboard {GUEST} --yes")
    assert done == (
        f"Guest {GUEST}: DMZ account deactivated; removed from `{ROOMS[0]}`, `{ROOMS[2]}`; "
        f"could not remove from `{ROOMS[1]}` (M_FORBIDDEN: You cannot kick user)."
    )
    assert registrar.guests[GUEST]["status"] == "deactivated"
    assert homeserver.kicks == [(ROOMS[0], GUEST), (ROOMS[2], GUEST)]
    entry = (await chat.audit())[0]
    assert (entry.command, entry.outcome) == ("guest offboard", "failed")


async def test_an_unknown_guest_is_left_alone(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    seat(homeserver, GUEST)
    done = await chat.ask(f"!guest offboard {GUEST} --yes")
    assert done == f"{GUEST} is not a known guest; nothing was done."
    assert homeserver.kicks == []


async def test_a_project_is_offboarded_at_once(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    for guest in (GUEST, OTHER, "@outside:dmz.example"):
        registrar.add_guest(guest, "@alice:corp.example")
    registrar.guests[GUEST]["project"] = registrar.guests[OTHER]["project"] = "apollo"
    seat(homeserver, GUEST, OTHER, "@outside:dmz.example")
    asked = await chat.ask("!guest offboard --project apollo")
    assert asked.startswith("Offboard the 2 active guests of project `apollo`")
    done = await chat.ask("!guest offboard --project apollo --yes")
    assert done.startswith("Offboarded 2 of 2 guests:")
    assert {user for _, user in homeserver.kicks} == {GUEST, OTHER}
    assert registrar.guests["@outside:dmz.example"]["status"] == "active"
    assert await chat.ask("!guest offboard --project apollo --yes") == (
        "Project `apollo` has no active guests."
    )


async def test_offboard_usage(chat: Chat) -> None:
    reply = await chat.ask("!guest offboard")
    assert reply.startswith("The guest's user ID (or --project) is missing.")
    reply = await chat.ask("!guest offboard --project 'no spaces'")
    assert reply.startswith("--project must be a name")
