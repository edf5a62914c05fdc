"""extract: texts -> objects that validate against a JSON schema, on the real default model and
real BBC News articles; every schema mistake is one line."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.tasks.extract import check_schema, load_schema
from autoglm.engine.tasks.schema_grammar import MAX_SCHEMA_CHARS, schema_grammar
from tests.conftest import run_cli

NEWS = {"type": "object", "properties": {
    "category": {"enum": ["business", "entertainment", "politics", "sport", "tech"]},
    "people": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 4},
    "headline": {"type": "string", "maxLength": 100}},
    "required": ["category", "people", "headline"]}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                                           "city": {"type": "string", "maxLength": 40}},
          "required": ["name", "age", "city"]}


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "is not JSON: Expecting property name"),
    ("[1, 2]", "must be a JSON object"),
    ('{"type": "array", "items": {}}', "must describe an object"),
    ('{"type": "object", "properties": {"a": {"type": "nosuchtype"}}}',
     "is not a valid JSON schema (properties/a/type)"),
    ('{"type": "object", "properties": {"a": {"enum": ["' + "x" * MAX_SCHEMA_CHARS + '"]}}}', "a schema of at most"),
    ('{"type": "object", "properties": {"a": ' * 400 + '{"type": "string"}' + "}}" * 400, "is nested too deeply"),
])
def test_a_bad_schema_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgumentError) as err:
        load_schema(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_schemas_the_grammar_converter_cannot_express_are_one_line():
    with pytest.raises(InvalidArgumentError, match="not supported"):
        schema_grammar(check_schema({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}))
    with pytest.raises(InvalidArgumentError, match="too much structure"):
        schema_grammar({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"},
                                                              "minItems": 4000}}})
    with pytest.raises(InvalidArgumentError, match="not supported"):
        schema_grammar({"type": "object", "properties": {"a": {"type": "string", "pattern": "(a|b"}}})


@pytest.mark.parametrize("fragment, needle", [
    ({"type": "string", "maxLength": 1e9}, "maxLength 1e+09 is out of range"),
    ({"type": "string", "minLength": 1000000000}, "minLength 1e+09 is out of range"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 10 ** 12}, "minItems 1e+12 is out of range"),
    ({"type": "integer", "minimum": 1e300}, "minimum 1e+300 is out of range"),
    ({"type": "number", "maximum": -1e16}, "maximum -1e+16 is out of range"),
    ({"type": "number", "multipleOf": 0}, "multipleOf 0 is out of range"),
])
def test_counts_and_bounds_are_checked_before_the_grammar_is_built(fragment, needle):
    """minLength 1e9 held a request 56 s and 5.5 GB while the converter spelled it out; now refused at once."""
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError, match=re.escape(needle)):
        schema_grammar({"type": "object", "properties": {"deep": {"type": "object", "properties": {"a": fragment}}}})
    assert time.monotonic() - started < 1


def test_cli_schema_mistakes_end_before_any_model_loads(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text("{oops")
    out = run_cli("extract", "--schema", str(bad), "some text")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not JSON" in out.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps(PERSON))
    out = run_cli("extract", "--schema", str(good))
    assert out.returncode == 2 and "give one text, or --file" in out.stderr


@pytest.mark.slow
def test_one_text_gives_one_valid_object(default_model, tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    out = run_cli("extract", "--schema", str(schema), "Ann Smith, 34, lives in Oslo and works as a nurse.")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    jsonschema.validate(data, PERSON)
    assert data == {"name": "Ann Smith", "age": 34, "city": "Oslo"}


@pytest.mark.slow
def test_a_file_of_news_articles_gives_one_line_each(default_model, tmp_path):
    from benchmarks.datasets import bbc_news

    texts = [" ".join(t.split()[:80]) for t in bbc_news().test_texts[:10]]
    articles = tmp_path / "articles.txt"
    # a blank line answers null and keeps output line N with input line N (it used to be skipped, so every
    # answer after it moved up a line); it is no failure
    articles.write_text("\n".join(texts[:5] + [""] + texts[5:]) + "\n")
    schema = tmp_path / "news.json"
    schema.write_text(json.dumps(NEWS))
    out = run_cli("extract", "--schema", str(schema), "--file", str(articles), "--parallel", "4")
    lines = out.stdout.splitlines()
    assert len(lines) == len(texts) + 1 and lines[5] == "null", out.stderr
    objects = [json.loads(line) for i, line in enumerate(lines) if i != 5]
    for obj in objects:
        if obj is not None:
            jsonschema.validate(obj, NEWS)
    failed = sum(obj is None for obj in objects)
    assert failed <= 2, out.stderr  # the grammar makes the shape; only an overlong answer can fail
    assert out.returncode == (1 if failed else 0)


@pytest.mark.slow
def test_an_answer_cut_short_is_a_null_line_with_the_reason(default_model, tmp_path):
    schema = tmp_path / "news.json"
    schema.write_text(json.dumps(NEWS))
    texts = tmp_path / "t.txt"
    texts.write_text("Shares in Acme rose 5% after results.\nThe match ended 2-2.\n")
    out = run_cli("extract", "--schema", str(schema), "--file", str(texts), "--max-tokens", "3")
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["null", "null"]
    assert "line 1: the answer passed 3 tokens before its JSON closed" in out.stderr
    assert "Traceback" not in out.stderr
