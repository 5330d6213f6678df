"""Property tests (hypothesis) for prompt templates, record keys and image file names: what must hold for every
input, not only for the examples someone thought of."""

from __future__ import annotations

import codecs
import posixpath
import re
import string
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pixelmill.errors import ConfigError, InputError
from pixelmill.reading.records import KEY_MAX, read_records, render_template, sanitize_key, template_fields
from pixelmill.writing.journal import Journal, RowIdentity
from pixelmill.writing.store import check_name_template, image_stem

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200)  # surrogates too
SAFE = string.ascii_letters + string.digits + "._-"
FIELD_NAME = st.text(alphabet=st.characters(exclude_characters=".[]{}!:", exclude_categories=("Cs",)),
                     min_size=1, max_size=12)
STEP_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(lambda s: ".." not in s)


# ---------------------------------------------------------------- record keys


@SETTINGS
@given(st.one_of(ANY_TEXT, st.integers(), st.floats(), st.booleans()))
@example("../../x")
@example("/etc/passwd")
@example("\uff0e\uff0e/\uff0e\uff0e")  # full-width dots: '..' after NFKC normalisation
@example("a\x00b")
def test_a_sanitised_key_is_one_safe_file_name(value: object) -> None:
    key = sanitize_key(value)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", key)
    assert key == "_" or key[0].isalnum()
    assert ".." not in key and len(key) <= KEY_MAX
    assert sanitize_key(value) == key  # stable: a resume names files the same way
    path = posixpath.normpath(f"images/generate/{key}_0.png")
    assert path.startswith("images/generate/") and path.count("/") == 2


@SETTINGS
@given(st.text(alphabet=SAFE, min_size=KEY_MAX, max_size=KEY_MAX + 40), st.text(alphabet=SAFE, min_size=1),
       st.text(alphabet=SAFE, min_size=1))
def test_long_ids_that_share_a_prefix_stay_apart(prefix: str, a: str, b: str) -> None:
    if a == b or sanitize_key(prefix + a) == prefix + a:
        return
    assert sanitize_key(prefix + a) != sanitize_key(prefix + b)


WANTED = st.sampled_from(["a", "a-1", "a-2", "a-3", "a-1-2", "b", "row000001", "row000001-1"])


@SETTINGS
@given(st.lists(WANTED, max_size=12), st.integers(min_value=1, max_value=5), st.sets(st.integers(0, 11)))
@example(["a-2", "a", "a"], 3, set())
@example(["a", "a", "a-1", "a-1-2", "a-1"], 1, {0})
def test_record_keys_are_unique_and_stable(wanted: list[str], chunk: int, edited: set[int]) -> None:
    """Whatever the ids and however rows arrive in chunks, every row gets its own key; asking again (a resume)
    gives the same keys; rows whose content changed get keys again, still all distinct."""
    journal = Journal(Path(":memory:"))
    rows = [(row, want, f"digest {row}") for row, want in enumerate(wanted)]

    def assign(batch: list[tuple[int, str, str]]) -> dict[int, str]:
        identities = [RowIdentity(row, want, digest, f"id:{want}") for row, want, digest in batch]
        keys: dict[int, str] = {}
        for start in range(0, len(identities), chunk):
            keys.update({row: entry.key for row, entry in journal.claim(identities[start:start + chunk])[0].items()})
        return keys

    keys = assign(rows)
    assert len(set(keys.values())) == len(rows)
    for row, want, _ in rows:
        assert keys[row] == want or keys[row].startswith(f"{want}-{row}")
    assert assign(rows) == keys
    journal.begin_read()  # a resume: a new read of the same rows finds the same entries
    assert assign(rows) == keys
    changed = [(row, want, digest + " edited" if row in edited else digest) for row, want, digest in rows]
    again = assign(changed)
    assert len(set(again.values())) == len(rows)
    assert {row: key for row, key in again.items() if row not in edited} == \
        {row: key for row, key in keys.items() if row not in edited}


# ---------------------------------------------------------------- prompt templates


LITERAL = st.text(max_size=12)
SEGMENT = st.one_of(LITERAL.map(lambda t: ("text", t)), FIELD_NAME.map(lambda n: ("field", n)))
# Integers as sources give them (JSON lines are read with orjson: 64 bits; a bigger one is a separate test).
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
VALUE = st.one_of(st.text(max_size=20), INT64, st.lists(INT64, max_size=3),
                  st.dictionaries(st.text(max_size=3), INT64, max_size=2), st.booleans())


def escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@SETTINGS
@given(st.lists(SEGMENT, max_size=8), st.data())
def test_templates_render_exactly_their_fields(segments: list[tuple[str, str]], data: st.DataObject) -> None:
    template = "".join(escape_braces(v) if kind == "text" else "{" + v + "}" for kind, v in segments)
    names = [v for kind, v in segments if kind == "field"]
    assert template_fields(template) == names
    values = {name: data.draw(VALUE, label=name) for name in names}
    expected = "".join(v if kind == "text" else
                       (values[v] if isinstance(values[v], str) else orjson.dumps(values[v]).decode())
                       for kind, v in segments)
    assert render_template(template, values) == expected  # values go in verbatim: never formatted again
    if names:
        missing = dict(values)
        del missing[names[0]]
        if names[0] not in missing:
            with pytest.raises(InputError, match="needs field"):
                render_template(template, missing)


@SETTINGS
@given(ANY_TEXT)
@example("{x.__class__}")
@example("{x[0]}")
@example("{x!r}")
@example("{x:>99999}")
@example("{")
def test_any_template_is_plain_fields_or_a_config_error(template: str) -> None:
    """A template reads fields by name and nothing else: no attribute or index access, conversions or format
    specs (which could reach into objects or blow up memory). Anything else is a ConfigError, not a crash."""
    try:
        names = template_fields(template)
    except ConfigError:
        return
    for name in names:
        assert name and not set(name) & set(".[]{}!:")
    rendered = render_template(template, dict.fromkeys(names, "v"))
    assert isinstance(rendered, str)


# ---------------------------------------------------------------- image file names

NAME_PART = st.one_of(
    st.sampled_from(["{key}", "{i}", "{row}", "{step}", "{field}", "/", "..", ".", "_", "-", "\\", "{other}"]),
    st.text(alphabet=SAFE, min_size=1, max_size=4),
)


@SETTINGS
@given(st.lists(NAME_PART, min_size=1, max_size=8).map("".join), ANY_TEXT, STEP_NAME, FIELD_NAME.filter(
    lambda f: re.fullmatch(r"[A-Za-z0-9_]+", f) is not None), st.integers(0, 20), st.integers(0, 10**7))
@example("{key}/../../{i}", "x", "generate", "images", 0, 0)
@example("/{key}_{i}", "x", "generate", "images", 0, 0)
def test_accepted_name_templates_stay_inside_images(template: str, raw_id: str, step: str, field: str, i: int,
                                                     row: int) -> None:
    try:
        check_name_template(template)
    except ConfigError:
        return
    stem = image_stem(template, step=step, key=sanitize_key(raw_id), i=i, row=row, field=field)
    path = posixpath.normpath(f"images/{stem}.png")
    assert path.startswith("images/") and not path.startswith("images/..")


@SETTINGS
@given(st.lists(NAME_PART, min_size=1, max_size=6).map("".join),
       st.lists(st.tuples(st.text(alphabet=SAFE, min_size=1, max_size=6), st.integers(0, 10**7)), min_size=2,
                max_size=6, unique_by=(lambda t: t[0], lambda t: t[1])),
       st.integers(1, 20))
@example("{key}{i}", [("a1", 0), ("a", 1)], 12)
@example("{key}{row}_{i}", [("a", 1_000_000), ("a1", 0)], 1)
def test_accepted_name_templates_give_every_image_its_own_file(template: str, rows: list[tuple[str, int]],
                                                               n: int) -> None:
    """Rows with distinct keys (the journal makes them so), each with n images (an n above the model's limit is
    split into calls, so i goes past 9), never share a file."""
    try:
        check_name_template(template)
    except ConfigError:
        return
    stems = [posixpath.normpath(image_stem(template, step="s", key=key, i=i, row=row, field="images"))
             for key, row in rows for i in range(n)]
    assert len(set(stems)) == len(stems), template


# ---------------------------------------------------------------- reading sources


@SETTINGS
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=15), st.booleans())
@example([b'{"prompt": "a"}', b"", b"\xff"], True)
def test_every_non_blank_line_is_exactly_one_row(tmp_path_factory: pytest.TempPathFactory, lines: list[bytes],
                                                 bom: bool) -> None:
    """Whatever the bytes, reading never fails and every non-blank line becomes one record, numbered by its line:
    nothing is lost, nothing is doubled."""
    path = tmp_path_factory.mktemp("lines") / "in.jsonl"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + b"\n".join(lines))
    records = list(read_records(path))
    expected = [n for n, line in enumerate(lines, start=1) if line.strip()]
    assert [r.line for r in records] == expected
    assert [r.index for r in records] == list(range(len(expected)))
    for record in records:
        assert (record.data is None) == (record.error is not None)
        if record.error is not None:
            assert record.error.startswith(f"line {record.line}: ")
