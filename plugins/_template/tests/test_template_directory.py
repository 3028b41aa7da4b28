"""The template's `directory` input in a real router (the test kit's `make_app`, a file output, the admin
endpoint on a real socket): a dropped file is stored, archived and then deleted; what cannot be an event is
kept as a dead letter with the file's bytes; a full spool holds the files until there is room, and a file
renamed onto a held one's name is not deleted with it; a missing directory keeps the router not ready until
it appears; a file read again is not stored twice; a pause of 0 is refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import event_router_template
from event_router.api import RouterError
from event_router.testing import (
    MakeApp,
    archive_all,
    dead_letters,
    example,
    free_port,
    http_receiver,
    read_jsonl,
    readyz,
    router_table,
    until,
)

PLUGINS = [event_router_template]
pytestmark = pytest.mark.anyio


def config(admin: int, *, router: str = "", extra: str = "", outputs: str | None = None) -> str:
    table = '[inputs.drop]\ntype = "directory"\npath = "./incoming"\npoll_interval = "20ms"\n'
    return router_table(admin, extra=router) + table + extra + "\n" + (archive_all() if outputs is None else outputs)


def mail(n: int) -> dict[str, Any]:
    """The Connector's transport.messageReceived webhook body, with message id `n`."""
    body = example("transport.messageReceived")
    return {"trigger": body["trigger"], "data": {**body["data"], "id": f"MSG{n:017d}"}}


def drop(directory: Path, name: str, body: bytes | dict[str, Any], mtime_ns: int | None = None) -> None:
    """Write a file as a writer must: under a name starting with `.`, then renamed into place."""
    part = directory / f".{name}.part"
    part.write_bytes(body if isinstance(body, bytes) else orjson.dumps(body))
    if mtime_ns is not None:
        os.utime(part, ns=(mtime_ns, mtime_ns))
    part.rename(directory / name)


def spool_of_2(url: str) -> str:
    """router.toml with a spool that holds 2 events, all sent to an http receiver at `url`, retried soon."""
    retry = 'retry = { initial_backoff = "20ms", max_backoff = "100ms", max_attempts = 1000 }'
    outputs = f'[outputs.sink]\ntype = "http"\nurl = "{url}/hook"\n{retry}\n[[routes]]\nname = "all"\nto = "sink"\n'
    return config(free_port(), router="max_pending_events = 2", outputs=outputs)


def left(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_dropped_files_are_stored_archived_and_deleted(make_app: MakeApp, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    admin = free_port()
    async with make_app(config(admin), plugins=PLUGINS):
        status, body = await anyio.to_thread.run_sync(readyz, admin)
        assert status == 200, body
        for n in (2, 1, 3):
            drop(incoming, f"{n:04d}.json", mail(n))
        (incoming / ".0004.json.part").write_bytes(b'{"trigger": "transport.messageReceived", "da')
        (incoming / "notes.txt").write_text("not matched by the pattern")
        archive = tmp_path / "var" / "events.jsonl"
        lines = await until(lambda: len(read_jsonl(archive)) == 3 and read_jsonl(archive), what="3 archived events")
        await until(lambda: left(incoming) == [".0004.json.part", "notes.txt"], what="the stored files deleted")
    assert [line["data"]["id"] for line in lines] == [f"MSG{n:017d}" for n in (1, 2, 3)], "read in name order"
    assert {line["source"] for line in lines} == {"drop"}
    assert [line["meta"] for line in lines] == [{"file": f"{n:04d}.json"} for n in (1, 2, 3)]
    assert lines[0]["data"] == mail(1)["data"]


async def test_what_is_no_event_becomes_a_dead_letter_with_its_bytes(make_app: MakeApp, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    broken = {
        "a.json": b"{not json",
        "b.json": b'{"data": {"id": "MSG1"}}',
        "c.json": b"\xff\xfe{}",
        "d.json": b"[1, 2]",
    }
    async with make_app(config(free_port()), plugins=PLUGINS) as app:
        for name, raw in broken.items():
            drop(incoming, name, raw)
        drop(incoming, "e.json", mail(5))
        archive = tmp_path / "var" / "events.jsonl"
        await until(lambda: left(incoming) == [] and read_jsonl(archive), what="every file taken")
        letters = dead_letters(app.config.data_dir)
    assert [line["data"]["id"] for line in read_jsonl(archive)] == [f"MSG{5:017d}"]
    assert len(letters) == 4
    assert {(dl.reason, dl.source) for dl in letters} == {("undecodable", "drop")}
    # each keeps what the input rejected: the file's bytes (`raw`) and its `meta`
    kept = {(event := orjson.loads(dl.body))["meta"]["file"]: (event, str(dl.error)) for dl in letters}
    assert {name: kept[name][0]["raw"] for name in broken} == {
        name: raw.decode("utf-8", "backslashreplace") for name, raw in broken.items()
    }
    assert "not JSON" in kept["a.json"][1] and "not JSON" in kept["c.json"][1]
    assert '"trigger"' in kept["b.json"][1] and '"trigger"' in kept["d.json"][1]


async def test_a_full_spool_holds_the_files_until_there_is_room(make_app: MakeApp, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with http_receiver() as receiver:
        receiver.respond(503)
        async with make_app(spool_of_2(receiver.url), plugins=PLUGINS) as app:
            for n in range(6):
                drop(incoming, f"{n:04d}.json", mail(n))
            await until(lambda: app.stats.get("spool_full_rejections"), what="the spool to fill")
            # what is not stored is not acknowledged: its file stays, and none is lost in between
            await until(lambda: len(left(incoming)) + app.spool.depth == 6, what="files held while full")
            assert left(incoming), "the spool holds 2: the other files wait"
            await anyio.sleep(0.3)
            assert left(incoming), "still held, not dropped"
            receiver.respond(200)
            await until(lambda: not left(incoming) and app.spool.depth == 0, what="every file stored and delivered")
        copies: dict[str, set[str]] = {}
        for body in receiver.bodies():  # the 503 answers made the output send some events again
            copies.setdefault(body["data"]["id"], set()).add(body["id"])
    assert sorted(copies) == [f"MSG{n:017d}" for n in range(6)]
    assert all(len(ids) == 1 for ids in copies.values()), f"a held file was stored twice: {copies}"


async def test_a_file_renamed_onto_a_held_name_is_not_deleted_with_it(make_app: MakeApp, tmp_path: Path) -> None:
    """A writer may rename a new file onto the name of one read but not yet stored (held while the spool is
    full): once the old one is stored, the new one must stay and be read, not be deleted unstored."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with http_receiver() as receiver:
        receiver.respond(503)
        async with make_app(spool_of_2(receiver.url), plugins=PLUGINS) as app:
            for n in range(4):
                drop(incoming, f"{n:04d}.json", mail(n))
            await until(lambda: app.stats.get("spool_full_rejections"), what="the spool to fill")
            await until(lambda: len(left(incoming)) + app.spool.depth == 4, what="files held while full")
            held = left(incoming)[-1]
            drop(incoming, held, mail(99))  # replaces the held file under its name
            receiver.respond(200)
            await until(lambda: not left(incoming) and app.spool.depth == 0, what="every file stored and delivered")
        delivered = {body["data"]["id"] for body in receiver.bodies()}
    assert delivered == {f"MSG{n:017d}" for n in (0, 1, 2, 3, 99)}


async def test_not_ready_until_the_directory_exists(make_app: MakeApp, tmp_path: Path) -> None:
    admin = free_port()
    incoming = tmp_path / "incoming"
    async with make_app(config(admin, extra='recheck_max = "100ms"'), plugins=PLUGINS, ready=False) as app:
        status, body = await until(lambda: anyio.to_thread.run_sync(_readyz_once, admin), what="the admin endpoint")
        assert status == 503, body
        assert body["inputs"] == {"drop": False}
        assert str(incoming) in body["reasons"]["drop"]
        incoming.mkdir()
        await until(app.config.inputs["drop"].plugin.is_ready, what="the input to find the directory")
        status, body = await anyio.to_thread.run_sync(readyz, admin)
        assert status == 200, body
        drop(incoming, "0001.json", mail(1))
        archive = tmp_path / "var" / "events.jsonl"
        await until(lambda: read_jsonl(archive), what="the archived event")


def _readyz_once(admin: int) -> tuple[int, dict[str, Any]] | None:
    try:
        return readyz(admin)
    except OSError:  # not listening yet
        return None


async def test_a_file_read_again_is_not_stored_twice(make_app: MakeApp, tmp_path: Path) -> None:
    """A router killed after storing a file and before deleting it reads the file again at its next start:
    the same name, inode, bytes and modification time. The spool recognises it (`submit` says duplicate)."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    keep = tmp_path / "keep"  # a second link holds the file's inode while the input deletes its name
    keep.mkdir()
    archive = tmp_path / "var" / "events.jsonl"
    mtime = 1_700_000_000_123_456_789
    async with make_app(config(free_port()), plugins=PLUGINS) as app:
        drop(incoming, "0001.json", mail(1), mtime_ns=mtime)
        os.link(incoming / "0001.json", keep / "0001.json")
        await until(lambda: read_jsonl(archive) and not left(incoming), what="the first copy stored")
        os.link(keep / "0001.json", incoming / "0001.json")  # the same file, as found again after a crash
        await until(lambda: app.stats.get("duplicates") == 1 and not left(incoming), what="the copy recognised")
        # controls: another file with the same content is another event, under another name or the same
        drop(incoming, "0002.json", mail(1), mtime_ns=mtime)
        await until(lambda: len(read_jsonl(archive)) == 2, what="the other file stored")
        drop(incoming, "0001.json", mail(1), mtime_ns=mtime)
        await until(lambda: len(read_jsonl(archive)) == 3, what="a new file under the old name stored")
        assert app.stats.get("duplicates") == 1
    assert [line["meta"]["file"] for line in read_jsonl(archive)] == ["0001.json", "0002.json", "0001.json"]


async def test_config_errors_name_the_key(make_app: MakeApp, tmp_path: Path) -> None:
    with pytest.raises(RouterError, match=r"inputs\.drop\.poll_interval: .*is not a duration"):
        async with make_app(config(free_port()).replace('"20ms"', '"soon"'), plugins=PLUGINS):
            pass


@pytest.mark.parametrize(("key", "value"), [("poll_interval", "0"), ("poll_interval", '"0s"'), ("recheck_max", "0")])
async def test_a_pause_of_0_is_refused(make_app: MakeApp, tmp_path: Path, key: str, value: str) -> None:
    """The schema admits a duration of 0; the input would then list the directory in a tight loop."""
    text = config(free_port(), extra=f"{key} = {value}\n")
    if key == "poll_interval":  # the one given here, not the test default
        text = text.replace('poll_interval = "20ms"\n', "")
    with pytest.raises(RouterError, match=rf"inputs\.drop\.{key}: .*too short"):
        async with make_app(text, plugins=PLUGINS):
            pass
