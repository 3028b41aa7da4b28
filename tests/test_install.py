"""The wheels scripts/build-wheels makes, installed into fresh virtualenvs, run the router.

This checkout's .venv has every distribution and dev tool at once, so a library one distribution forgets
to declare is there anyway (prometheus-client came into it through the Pub/Sub plugin's dependencies).
Here each install is a new `python -m venv` holding one set of wheels and what they declare, from the
package index pip is configured with; every command runs that venv's own `event-router`, in a directory
outside the checkout, with no PYTHONPATH. Nothing of .venv proves anything here.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from event_router.testing import (
    ROOT,
    RouterProcess,
    example,
    free_port,
    post,
    read_jsonl,
    router_table,
    wait_for,
    webhook_input,
)

# building the wheels and a venv's install take minutes on a busy machine; the first test pays for them
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
#: the plugins the project ships (plugins/_template is a folder to copy)
PLUGINS = sorted(p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml") if p.parent.name != "_template")

#: per plugin: a config whose input is of the plugin's type (aimed at a loopback port nothing listens on:
#: `check` builds the input without connecting)
PLUGIN_INPUTS = {
    "amqp": 'type = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:{port}/"',
    "mqtt": 'type = "mqtt"\nurl = "mqtt://127.0.0.1:{port}"',
    "pubsub": 'type = "pubsub"\nproject = "test-project"\nsubscription = "connector-events"\n'
    'emulator_host = "127.0.0.1:{port}"',
    "redis": 'type = "redis"\nurl = "redis://127.0.0.1:{port}/0"',
}

#: the core's test kit modules that need its `testing` extra (pytest, hypothesis), absent from a router install
NEEDS_TESTING_EXTRA = ["event_router.testing.fixtures", "event_router.testing.strategies"]
#: the PostgreSQL spool, which needs the `postgresql` extra (psycopg) and is imported only when configured
NEEDS_POSTGRESQL_EXTRA = ["event_router.core.spool.postgresql"]
#: telemetry, which needs the `otel` extra (the OpenTelemetry SDK and its OTLP/HTTP exporter), imported only
#: when `[router.telemetry]` is configured
NEEDS_OTEL_EXTRA = ["event_router.core.telemetry"]

#: imports every module of a package in the venv (what an input imports lazily too) and says where from
IMPORT_ALL = """
import importlib, importlib.util, json, pkgutil, sys
package, skip = sys.argv[1], set(sys.argv[2:])
root = importlib.import_module(package)
names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
failed = {}
for name in names:
    if name in skip or name.endswith(".__main__"):
        continue
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
dev_only = [m for m in ("pytest", "hypothesis", "mypy", "hatchling") if importlib.util.find_spec(m)]
print(json.dumps({"file": root.__file__, "prefix": sys.prefix, "modules": len(names), "failed": failed,
                  "dev_only": dev_only}))
"""


#: the webhook inputs' API key (router.toml names the variable, as the shipped example does)
ENV = {"ROUTER_WEBHOOK_API_KEY": "install-key"}
HEADERS = {"x-api-key": "install-key"}


def distribution_of(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Distribution name -> its wheel, built once for the module by the project's own script."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-wheels"), str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    found = {distribution_of(w): w for w in out.glob("*.whl")}
    assert set(found) == {"enmeshed-event-router", *(f"event-router-{p}" for p in PLUGINS)}, built.stdout
    assert built.stdout.split() == [str(w) for w in sorted(out.glob("*.whl"))]
    return found


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment without anything that would put another install on the venv's path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


@dataclass
class Venv:
    path: Path
    #: where commands run: outside the checkout, so nothing of it is importable from the working directory
    cwd: Path

    def run(self, *args: str, program: str = "event-router") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.path / "bin" / program), *args],
            cwd=self.cwd,
            env={**clean_env(self.path), **ENV},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def config(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.write_text(text)
        return path

    def import_all(self, package: str, *skip: str) -> dict[str, object]:
        done = self.run("-c", IMPORT_ALL, package, *skip, program="python")
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report


def make_venv(root: Path, *wheels: Path, own_pip: bool) -> Venv:
    """A new venv with `wheels` and their dependencies. `own_pip`: with pip in it, installing with it, as
    docs/operating.md does; otherwise without (ensurepip costs seconds per venv), installed by this
    interpreter's pip for the venv's interpreter (`pip --python`): either way only the venv gets packages."""
    path = root / "venv"
    created = subprocess.run(
        [sys.executable, "-m", "venv", *([] if own_pip else ["--without-pip"]), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    pip = (
        [str(path / "bin" / "pip")]
        if own_pip
        else [sys.executable, "-m", "pip", "--python", str(path / "bin" / "python")]
    )
    installed = subprocess.run(
        [*pip, "install", "--quiet", "--no-compile", *map(str, wheels)],
        capture_output=True,
        text=True,
        cwd=root,
        env=clean_env(path),
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True, cwd=root, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    work = root / "work"
    work.mkdir()
    return Venv(path, work)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Venv:
    """The core wheel alone, installed as docs/operating.md says."""
    return make_venv(tmp_path_factory.mktemp("core"), wheels["enmeshed-event-router"], own_pip=True)


@pytest.fixture(scope="module", params=PLUGINS)
def plugin(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def plugin_venv(plugin: str, tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Venv:
    """The core wheel and one plugin's wheel, nothing else of this repository."""
    root = tmp_path_factory.mktemp(f"plugin-{plugin}")
    return make_venv(root, wheels["enmeshed-event-router"], wheels[f"event-router-{plugin}"], own_pip=False)


def builtin_config(port: int, admin: int, second: int) -> str:
    return f"""
{router_table(admin, shutdown_timeout="5s")}{webhook_input(port)}[inputs.second]
type = "webhook"
listen = "127.0.0.1:{second}"
api_key = {{ env = "ROUTER_WEBHOOK_API_KEY" }}
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "archive everything"
match = {{ trigger = ["**"] }}
to = ["archive"]
"""


def test_the_operating_guides_install_names_the_wheels_the_script_builds(wheels: dict[str, Path]) -> None:
    """docs/operating.md installs from a checkout: `scripts/build-wheels`, then `pip install` of wheels by glob.
    Each glob it gives (and `dist/event_router_<name>-*.whl` for every plugin) must be one wheel the script
    builds, and the file name it shows must be the core's."""
    guide = (ROOT / "docs" / "operating.md").read_text()
    install = guide.split("## Install", 1)[1].split("\n## ", 1)[0]
    block = install.split("```sh", 1)[1].split("```", 1)[0]
    built = sorted(w.name for w in wheels.values())
    (pip_line,) = [line for line in block.splitlines() if "/bin/pip install " in line]
    globs = re.findall(r"dist/(\S+\.whl)", pip_line)
    assert globs == ["enmeshed_event_router-*.whl", "event_router_amqp-*.whl"], pip_line
    assert "scripts/build-wheels" in block
    assert f"dist/{wheels['enmeshed-event-router'].name}" in block
    assert "dist/event_router_<name>-*.whl" in install
    for pattern in globs + [f"event_router_{plugin}-*.whl" for plugin in PLUGINS]:
        assert len(fnmatch.filter(built, pattern)) == 1, (pattern, built)


def test_core_alone_has_everything_it_imports(core: Venv) -> None:
    report = core.import_all("event_router", *NEEDS_TESTING_EXTRA, *NEEDS_POSTGRESQL_EXTRA, *NEEDS_OTEL_EXTRA)
    assert report["failed"] == {}
    assert Path(str(report["file"])).is_relative_to(core.path), report
    assert Path(str(report["prefix"])) == core.path
    # the control that this is not .venv: the dev tools are not there
    assert report["dev_only"] == []
    assert int(str(report["modules"])) > 40


def test_core_alone_version(core: Venv) -> None:
    done = core.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"event-router {VERSION}\n"


def test_core_alone_check_schemas_plugins(core: Venv) -> None:
    config = core.config("router.toml", builtin_config(free_port(), free_port(), free_port()))
    checked = core.run("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    ok, spool, *guarantees = checked.stdout.splitlines()
    assert ok == f"{config}: ok: 2 input(s), 1 output(s), 1 route(s), 60 event schemas"
    assert spool.startswith("spool (sqlite): "), spool
    # each built-in input and output says its guarantee (none is the API's "unknown")
    assert len(guarantees) == 2 and all(g.startswith('route "archive everything": webhook "') for g in guarantees)
    assert not any("unknown" in g for g in guarantees), guarantees
    schemas = core.run("schemas", "--json", "-c", str(config))
    assert schemas.returncode == 0, schemas.stderr
    assert len(json.loads(schemas.stdout)) == 60
    plugins = core.run("plugins", "--json")
    assert plugins.returncode == 0, plugins.stderr
    listed = json.loads(plugins.stdout)
    assert {p["name"] for p in listed} == {
        "builtin.webhook",
        "builtin.recovery",
        "builtin.file",
        "builtin.http",
        "builtin.connector",
    }


def test_core_alone_refuses_a_broker_input(core: Venv) -> None:
    """The control for the plugin venvs below: their `check` passes because of the plugin."""
    config = core.config("amqp.toml", f"[inputs.q]\n{PLUGIN_INPUTS['amqp'].format(port=free_port())}\n")
    checked = core.run("check", "-c", str(config))
    assert checked.returncode != 0
    assert "amqp" in checked.stdout + checked.stderr


def test_core_alone_runs_webhook_to_file(core: Venv) -> None:
    port, admin, second = free_port(), free_port(), free_port()
    config = core.config("run.toml", builtin_config(port, admin, second))
    router = RouterProcess(
        config,
        env={**clean_env(core.path), **ENV},
        program=[str(core.path / "bin" / "event-router")],
    )
    with router:
        ids = []
        for target, trigger in ((port, "transport.messageReceived"), (second, "transport.relationshipChanged")):
            status, body, _ = post(f"http://127.0.0.1:{target}/events", example(trigger), HEADERS)
            assert status == 202, body
            ids.append(body["id"])
        archive = core.cwd / "var" / "events.jsonl"
        lines = wait_for(lambda: len(read_jsonl(archive)) == 2 and read_jsonl(archive), what="2 archived lines")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        # the console's templates and static files are in the wheel: its pages render from the install
        console = {}
        for path in ("/console/", "/console/static/console.css", "/console/static/console.js"):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as response:
                console[path] = (response.status, response.headers["Content-Type"], response.read().decode())
        assert router.terminate() == 0, router.logs()
    assert console["/console/"][0] == 200 and "<h1>Overview</h1>" in console["/console/"][2]
    assert "archive" in console["/console/"][2]
    assert console["/console/static/console.css"][1].startswith("text/css")
    assert "EventSource" in console["/console/static/console.js"][2]
    assert sorted(line["id"] for line in lines) == sorted(ids)
    assert {line["trigger"] for line in lines} == {"transport.messageReceived", "transport.relationshipChanged"}
    assert re.search(
        r'event_router_events_received_total\{input="connector",trigger="transport.messageReceived"\} 1', metrics
    )
    messages = [r["msg"] for r in router.log_records()]
    assert "router ready" in messages and "router stopped" in messages


def test_every_plugin_has_an_input_config() -> None:
    assert sorted(PLUGIN_INPUTS) == PLUGINS


def test_plugin_installs_with_what_it_imports(plugin: str, plugin_venv: Venv) -> None:
    report = plugin_venv.import_all(f"event_router_{plugin}")
    assert report["failed"] == {}
    assert Path(str(report["file"])).is_relative_to(plugin_venv.path), report
    assert report["dev_only"] == []


def test_plugin_version_lists_it(plugin: str, plugin_venv: Venv) -> None:
    done = plugin_venv.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"event-router {VERSION}\n  event-router-{plugin} {VERSION}\n"


def test_plugin_types_listed_and_checked(plugin: str, plugin_venv: Venv) -> None:
    listed = plugin_venv.run("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = [p for p in json.loads(listed.stdout) if not p["builtin"]]
    assert (entry["name"], entry["distribution"], entry["version"]) == (plugin, f"event-router-{plugin}", VERSION)
    assert plugin in entry["inputs"]
    config = plugin_venv.config(
        "router.toml",
        f"""
[inputs.broker]
{PLUGIN_INPUTS[plugin].format(port=free_port())}
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "archive everything"
match = {{ trigger = ["**"] }}
to = ["archive"]
""",
    )
    checked = plugin_venv.run("check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ok, spool, guarantee = checked.stdout.splitlines()
    assert ok == f"{config}: ok: 1 input(s), 1 output(s), 1 route(s), 60 event schemas"
    assert spool.startswith("spool (sqlite): "), spool
    # the installed plugin says its own guarantee, not the API's "unknown"
    assert guarantee.startswith(f'route "archive everything": {plugin} "broker" (') and "unknown" not in guarantee


@pytest.fixture(scope="module")
def template_venv(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Venv:
    """What a plugin copied from plugins/_template starts with: the core wheel with its `testing` extra and
    the template's wheel (built here: scripts/build-wheels leaves the folder to copy out)."""
    root = tmp_path_factory.mktemp("template")
    wheel = ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist")]
    built = subprocess.run(
        [sys.executable, "-m", "pip", *wheel, str(ROOT / "plugins" / "_template")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (template,) = (root / "dist").glob("*.whl")
    core_with_kit = Path(f"{wheels['enmeshed-event-router']}[testing]")
    return make_venv(root, core_with_kit, template, own_pip=False)


def test_template_installs_alone_and_its_tests_pass(template_venv: Venv) -> None:
    """The template's tests, copied out of the checkout, pass against the installed plugin (found through
    its entry point), with nothing but what the two wheels declare."""
    listed = template_venv.run("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = [p for p in json.loads(listed.stdout) if not p["builtin"]]
    assert (entry["distribution"], entry["inputs"], entry["outputs"]) == (
        "event-router-template",
        ["directory"],
        ["stdout"],
    )
    shutil.copytree(ROOT / "plugins" / "_template" / "tests", template_venv.cwd / "tests")
    done = template_venv.run("-m", "pytest", "tests", "-p", "no:cacheprovider", "-rs", program="python")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


#: a test of a project that installed the router and pytest but did not opt into the test kit
UNRELATED_TEST = """
def test_sees_nothing_of_the_test_kit(request):
    kit = [p for p in request.config.pluginmanager.get_plugins() if getattr(p, "__name__", "").startswith("event_")]
    assert kit == []
    assert "reap_routers" not in request.fixturenames
"""

#: a plugin's suite that opts in, as docs/plugins.md says: its fixtures, autouse included, and a router from
#: `make_app` that archives a webhook event and dead-letters an invalid one, which `dead_letters` reads
OPTED_IN_TEST = """
import anyio
import pytest
from event_router.testing import MakeApp, archive_all, dead_letters, example, free_port, post, read_jsonl
from event_router.testing import router_table, send_webhook, until, webhook_input

@pytest.mark.anyio
async def test_make_app_runs_a_router(make_app: MakeApp, request, tmp_path) -> None:
    assert "reap_routers" in request.fixturenames
    port, headers = free_port(), {"x-api-key": "install-key"}
    broken = example("transport.messageReceived")
    del broken["data"]["createdBy"]
    async with make_app(router_table() + webhook_input(port) + archive_all()):
        sent = await send_webhook(port, example("transport.messageReceived"), headers)
        lines = await until(lambda: read_jsonl(tmp_path / "var" / "events.jsonl"), "the archived event")
        url = f"http://127.0.0.1:{port}/events"
        status, body, _ = await anyio.to_thread.run_sync(lambda: post(url, broken, headers))
        assert status == 422, body
    assert [line["id"] for line in lines] == [sent]
    (letter,) = dead_letters(tmp_path / "var")
    assert (letter.reason, letter.trigger) == ("validation", "transport.messageReceived")
"""


def test_core_wheel_registers_no_pytest_plugin(wheels: dict[str, Path]) -> None:
    """Its entry points are the `event-router` command only: no `pytest11` loads the test kit into every
    pytest session of whoever installs the router."""
    with zipfile.ZipFile(wheels["enmeshed-event-router"]) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(wheel.read(name).decode())
    assert parser.sections() == ["console_scripts"]


def test_the_test_kit_is_opt_in(template_venv: Venv) -> None:
    """Installed with its `testing` extra (and a plugin), the router adds nothing to an unrelated pytest
    session; a suite that opts in gets the kit."""
    kit = template_venv
    unrelated, opted_in = kit.cwd / "unrelated", kit.cwd / "opted-in"
    for folder, files in (
        (unrelated, {"test_unrelated.py": UNRELATED_TEST}),
        (
            opted_in,
            {"conftest.py": 'pytest_plugins = ["event_router.testing.fixtures"]\n', "test_kit.py": OPTED_IN_TEST},
        ),
    ):
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    for folder in (unrelated, opted_in):
        done = kit.run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder), program="python")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 passed" in done.stdout, done.stdout
    listed = {
        folder: kit.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "--fixtures", str(folder), program="python")
        for folder in (unrelated, opted_in)
    }
    assert "make_app" not in listed[unrelated].stdout, listed[unrelated].stdout
    assert "make_app" in listed[opted_in].stdout, listed[opted_in].stdout
