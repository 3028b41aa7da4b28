"""Templates: `{{ field.path }}` syntax, rendering (strict and lenient, quoted), path lookup, every error."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_router.api.event import Event
from event_router.api.templates import (
    MISSING,
    MissingValueError,
    Template,
    TemplateError,
    compile_template,
    get_path,
    split_path,
)
from event_router.testing import example

_RAW = example("transport.messageReceived")
MAIL = Event(
    trigger=_RAW["trigger"], data=_RAW["data"], source="webhook", id="0190a1b2-0000-7000-8000-000000000001"
).to_dict()
ROOTS = ("id", "trigger", "source", "received_at", "data", "meta")


def url_quote(value: str) -> str:
    return quote(value, safe="")


def render(text: str, event: Any = MAIL, **kwargs: Any) -> str:
    return compile_template(text).render(event, **kwargs)


# --- get_path ------------------------------------------------------------------------------------------------


def test_get_path_dotted_and_segments() -> None:
    assert get_path(MAIL, "trigger") == "transport.messageReceived"
    assert get_path(MAIL, "data.content.@type") == "Mail"
    assert get_path(MAIL, ["data", "content", "@type"]) == "Mail"
    assert get_path(MAIL, ("data", "content")) is MAIL["data"]["content"]
    assert get_path({"a.b": 1}, ["a.b"]) == 1  # a key with a dot is reachable as a segment


def test_get_path_indexes_lists_with_numeric_segments() -> None:
    assert get_path(MAIL, "data.recipients.0.address") == MAIL["data"]["recipients"][0]["address"]
    assert get_path(MAIL, "data.content.to.0") == MAIL["data"]["content"]["to"][0]
    assert get_path(MAIL, "data.recipients.1.address") is MISSING
    assert get_path(MAIL, "data.recipients.-1") is MISSING
    assert get_path(MAIL, "data.recipients.address") is MISSING  # no fan-out here (that is match's job)
    assert get_path({"a": ("x", "y")}, "a.1") == "y"
    assert get_path({"a": {"0": "key"}}, "a.0") == "key"  # a mapping is looked up by key
    assert get_path({"a": ["x"]}, "a.\u0660") is MISSING  # only ASCII digits index


def test_get_path_missing_and_null() -> None:
    assert get_path(MAIL, "data.wasReadAt") is MISSING
    assert get_path(MAIL, "nothing.at.all") is MISSING
    assert get_path(MAIL, "data.id.0") is MISSING  # strings are not indexed
    assert get_path({"a": None}, "a") is None  # null is present
    assert get_path({"a": None}, "a.b") is MISSING
    assert get_path(None, "a") is MISSING
    assert repr(MISSING) == "MISSING"


def test_split_path() -> None:
    assert split_path("data.content.@type") == ("data", "content", "@type")
    for bad in ["", "data..id", ".data", "data.", "data id", "data.{x}", "a\tb"]:
        with pytest.raises(ValueError):
            split_path(bad)


# --- syntax -------------------------------------------------------------------------------------------------------


def test_fields_and_whitespace() -> None:
    template = compile_template("/{{trigger}}/{{ data.id }}/{{\tdata.content.@type\n}}/{{ data.id }}")
    assert isinstance(template, Template)
    assert template.source == "/{{trigger}}/{{ data.id }}/{{\tdata.content.@type\n}}/{{ data.id }}"
    assert template.fields == ("trigger", "data.id", "data.content.@type")
    assert template.render(MAIL) == "/transport.messageReceived/MSGNNKP7VFRCT9S2DYVE/Mail/MSGNNKP7VFRCT9S2DYVE"
    assert repr(template) == f"Template({template.source!r})"


def test_text_without_fields_is_itself() -> None:
    template = compile_template("https://crm.example.org/hook?x={y}&z=}}")
    assert template.fields == ()
    assert template.render({}) == "https://crm.example.org/hook?x={y}&z=}}"
    assert render("") == ""


def test_adjacent_and_edge_fields() -> None:
    assert render("{{trigger}}{{data.isOwn}}") == "transport.messageReceivedfalse"
    assert render("{{ data.id }}}") == "MSGNNKP7VFRCT9S2DYVE}"  # the first `}}` closes
    assert render("{ {{data.id}} }") == "{ MSGNNKP7VFRCT9S2DYVE }"


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("https://x/{{ data.id", 10, "unclosed '{{'"),
        ("{{", 0, "unclosed '{{'"),
        ("a {{ data.id }} b {{ trigger", 18, "unclosed '{{'"),
        ("x{{ }}", 1, "empty placeholder '{{ }}'"),
        ("{{}}", 0, "empty placeholder '{{}}'"),
        ("{{ data..id }}", 0, "'data..id' has an empty segment (two dots, or a dot at the start or end)"),
        (
            "{{ data.id | upper }}",
            0,
            "'data.id | upper' is not a field path (no spaces or braces; segments are separated by '.')",
        ),
        (
            "{{ {{ data.id }}",
            0,
            "'{{ data.id' is not a field path (no spaces or braces; segments are separated by '.')",
        ),
        ("{{ data.x() }}", 0, None),  # accepted as a (never present) key: no expressions are evaluated
    ],
)
def test_syntax_errors_name_template_and_position(text: str, position: int, message: str | None) -> None:
    if message is None:
        assert compile_template(text).render(MAIL, strict=False) == ""
        return
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    assert (info.value.position, info.value.message, info.value.template) == (position, message, text)
    assert str(info.value) == f"{message} at position {position} of template {text!r}"
    assert isinstance(info.value, ValueError)


def test_allowed_roots() -> None:
    assert compile_template("{{ data.id }}/{{trigger}}", allowed_roots=ROOTS).fields == ("data.id", "trigger")
    with pytest.raises(TemplateError) as info:
        compile_template("/hooks/{{ secret.token }}", allowed_roots=("data", "trigger"))
    assert str(info.value) == (
        "unknown field 'secret.token' (paths start with one of: data, trigger) at position 7 "
        "of template '/hooks/{{ secret.token }}'"
    )


# --- rendering ------------------------------------------------------------------------------------------------


def test_scalars_render_as_json_text() -> None:
    event = {"data": {"s": "text", "t": True, "f": False, "i": 42, "neg": -7, "x": 1.5, "big": 10**20, "e": 1e-7}}
    assert render("{{data.s}} {{data.t}} {{data.f}} {{data.i}} {{data.neg}} {{data.x}}", event) == (
        "text true false 42 -7 1.5"
    )
    assert render("{{data.big}} {{data.e}}", event) == "100000000000000000000 1e-07"


def test_strict_rendering_names_the_missing_path() -> None:
    with pytest.raises(MissingValueError) as info:
        render("/m/{{ data.wasReadAt }}")
    assert info.value.path == "data.wasReadAt"
    assert info.value.reason == "is missing"
    assert str(info.value) == "data.wasReadAt is missing (template '/m/{{ data.wasReadAt }}')"
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ data.content }}", "is not a scalar (an object)"),
        ("{{ data.recipients }}", "is not a scalar (an array)"),
        ("{{ data.nothing }}", "is missing"),
        ("{{ meta.null }}", "is null"),
    ],
)
def test_strict_rendering_refuses_non_scalars(text: str, reason: str) -> None:
    event = {**MAIL, "meta": {"null": None}}
    with pytest.raises(MissingValueError) as info:
        render(text, event)
    assert info.value.reason == reason
    assert render(f"<{text}>", event, strict=False) == "<>"


def test_quote_applies_to_values_only() -> None:
    event = {"trigger": "a/b?c=d&e", "data": {"n": 5, "peer": "did:e:x.org:dids:ab"}}
    template = compile_template("https://crm.example.org/hooks/{{trigger}}?peer={{ data.peer }}&n={{data.n}}")
    assert template.render(event, quote=url_quote) == (
        "https://crm.example.org/hooks/a%2Fb%3Fc%3Dd%26e?peer=did%3Ae%3Ax.org%3Adids%3Aab&n=5"
    )
    assert template.render(event) == "https://crm.example.org/hooks/a/b?c=d&e?peer=did:e:x.org:dids:ab&n=5"
    assert compile_template("{{ data.x }}").render({"data": {}}, quote=lambda v: "Q" + v, strict=False) == "Q"


def test_rendering_does_not_evaluate_anything() -> None:
    event = {"data": {"x": "{{ trigger }}", "y": "__import__('os')"}, "trigger": "t"}
    assert render("{{ data.x }}|{{ data.y }}", event) == "{{ trigger }}|__import__('os')"


# --- properties ---------------------------------------------------------------------------------------------------


@given(st.text())
def test_compile_raises_only_template_error(text: str) -> None:
    try:
        template = compile_template(text, allowed_roots=ROOTS)
    except TemplateError as exc:
        assert 0 <= exc.position < max(len(text), 1)
        return
    assert template.render(MAIL, strict=False, quote=url_quote) is not None


@given(st.text().filter(lambda t: "{{" not in t))
def test_text_without_open_braces_renders_unchanged(text: str) -> None:
    assert compile_template(text).render({}) == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


@given(json_values, st.sampled_from(["data", "data.a", "data.0", "data.a.0.b", "trigger"]))
def test_render_raises_only_missing_value_error(data: Any, path: str) -> None:
    template = compile_template("/{{ " + path + " }}/")
    try:
        out = template.render({"data": data, "trigger": "t"}, quote=url_quote)
    except MissingValueError as exc:
        assert exc.path == path
        return
    assert out.startswith("/")
    assert out.endswith("/")
    assert "/" not in out[1:-1]  # quoted: event data cannot add a path segment
