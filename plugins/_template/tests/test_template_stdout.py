"""The template's `stdout` output in a real router: an event posted to a webhook input on a real socket
is printed as one JSON line, with the route and the prefix. A control: the output is older than these
tests, which cover it now that the template is tested on its own."""

from __future__ import annotations

import orjson
import pytest

import event_router_template
from event_router.testing import MakeApp, example, free_port, router_table, send_webhook, until, webhook_input

PLUGINS = [event_router_template]


@pytest.mark.anyio
async def test_a_delivery_is_one_json_line_on_stdout(make_app: MakeApp, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    text = (
        router_table()
        + webhook_input(port, api_key=None)
        + (
            '[outputs.console]\ntype = "stdout"\nprefix = "EVENT "\n'
            '[[routes]]\nname = "watch"\nmatch = { trigger = ["transport.*"] }\nto = ["console"]\n'
        )
    )
    printed: list[str] = []

    def lines() -> list[str]:
        printed.extend(line for line in capsys.readouterr().out.splitlines() if line.startswith("EVENT "))
        return printed

    async with make_app(text, plugins=PLUGINS):
        event_id = await send_webhook(port, example("transport.messageReceived"))
        await until(lines, what="the printed line")
    (line,) = printed
    body = orjson.loads(line.removeprefix("EVENT "))
    assert (body["route"], body["id"]) == ("watch", event_id)
    assert body["body"]["data"] == example("transport.messageReceived")["data"]
