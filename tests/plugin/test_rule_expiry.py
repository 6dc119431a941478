"""Rule expiry notices in the control room: a week before and when expired, once each,
remembered across a restart (the plugin database), against the real gateway routes."""

from __future__ import annotations

import logging

from plugin import BastionBot
from plugin.expiry import ExpiryNotices

from .conftest import CONTROL, Chat
from .fake_gateway import GatewayDouble
from .test_sbg import maubot_plugin_config_dict

__all__ = ["maubot_plugin_config_dict"]  # test_sbg's fixture, reused

# 2027-03-24T00:00:00Z: a week before the end of March.
MARCH_24 = 1805846400.0


def notices(chat: Chat) -> list[str]:
    sent = chat.test_bot.responded
    return [
        e.content.body for e in sent if e.room_id == CONTROL and "Gateway rule" in e.content.body
    ]


async def test_notices_once_each_and_after_a_restart(
    chat: Chat, bot: BastionBot, gateway: GatewayDouble
) -> None:
    admin = {"expires_at": "2027-03-31"}
    await gateway.add("march", "server_block", {"servers": ["a.example"]}, **admin)
    await gateway.add("later", "server_block", {"servers": ["b.example"]}, expires_at="2027-06-01")
    await gateway.add(
        "off", "server_block", {"servers": ["c.example"]}, expires_at="2027-03-25", enabled=False
    )
    await gateway.add("forever", "server_block", {"servers": ["d.example"]})
    clock = [MARCH_24 - 3600]
    expiry = ExpiryNotices(
        bot.services, bot.database, logging.getLogger("t"), clock=lambda: clock[0]
    )
    assert await expiry.check() == 0  # eight days and an hour before
    clock[0] = MARCH_24 + 60
    assert await expiry.check() == 1
    [soon] = notices(chat)
    assert soon.startswith("Gateway rule `march` (server_block) expires in 6d 23h")
    assert "2027-03-31T00:00:00.000Z" in soon
    assert await expiry.check() == 0  # said once
    restarted = ExpiryNotices(
        bot.services, bot.database, logging.getLogger("t"), clock=lambda: clock[0]
    )
    assert await restarted.check() == 0  # remembered in the plugin database
    clock[0] = MARCH_24 + 7 * 86400
    assert await restarted.check() == 1
    assert notices(chat)[-1] == (
        "Gateway rule `march` (server_block) has expired (2027-03-31T00:00:00.000Z):"
        " it no longer applies."
    )
    assert await restarted.check() == 0
    assert len(notices(chat)) == 2  # "off" is disabled, "later" is months away


async def test_an_expired_rule_makes_protected_rooms_follow(
    chat: Chat, bot: BastionBot, gateway: GatewayDouble
) -> None:
    await gateway.add("march", "server_block", {"servers": ["a.example"]}, expires_at="2027-03-31")
    told: list[str] = []
    clock = [MARCH_24 + 60]
    expiry = ExpiryNotices(
        bot.services,
        bot.database,
        logging.getLogger("t"),
        clock=lambda: clock[0],
        on_expired=lambda acting: told.append(acting.user_id),
    )
    assert await expiry.check() == 1 and told == []  # a week before: nothing changes yet
    clock[0] = MARCH_24 + 7 * 86400
    assert await expiry.check() == 1
    assert told == [bot.client.mxid]  # the rooms' ACLs are re-applied (rooms/keeper.py)
