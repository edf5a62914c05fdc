"""Rerank: the ordering and bounds (fast tier), then the real encoder through the server, the
Python API and the CLI (slow tier)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.tasks.rerank import MAX_DOCUMENTS, check, rank


def test_most_relevant_first_ties_in_request_order_and_top_n():
    q = np.array([1.0, 0.0])
    docs = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    ranked = rank(q, docs, ["a", "b", "c", "d"])
    assert [r.index for r in ranked] == [1, 3, 2, 0] and ranked[0].text == "b" and ranked[0].score == 1.0
    assert [r.index for r in rank(q, docs, ["a", "b", "c", "d"], top_n=2)] == [1, 3]
    with pytest.raises(InvalidArgumentError, match="top_n"):
        rank(q, docs, ["a", "b", "c", "d"], top_n=0)


@pytest.mark.parametrize(("query", "documents", "says"), [
    ("", ["a"], "query is empty"), ("q", [], "must not be empty"), ("q", ["a", " "], "non-empty"),
    ("q", ["a"] * (MAX_DOCUMENTS + 1), "at most"),
])
def test_bad_rerank_requests_are_one_line_errors(query, documents, says):
    with pytest.raises(InvalidArgumentError, match=says):
        check(query, documents)


DOCS = ["The cat sat on the mat and purred.", "Interest rates rose by half a point this quarter.",
        "A kitten chased a ball of yarn across the floor."]


@pytest.mark.slow
def test_rerank_through_the_api_the_server_and_the_cli(default_model, tmp_path):

    from autoglm import Engine
    from tests.test_server import httpx, server

    ranked = Engine().rerank("pets at home", DOCS)
    assert {r.index for r in ranked[:2]} == {0, 2} and ranked[-1].index == 1
    with server("--parallel", "1", "--ctx", "512") as (url, _banner):
        r = httpx.post(url + "/v1/rerank", json.dumps({"query": "pets at home", "documents": DOCS, "top_n": 2,
                                                       "return_documents": True}).encode(),
                       {"Content-Type": "application/json"})
        body = r.json()
        assert r.status_code == 200 and body["method"] == "embedding" and len(body["results"]) == 2
        assert {x["index"] for x in body["results"]} == {0, 2} and body["results"][0]["document"]["text"] in DOCS
        bad = httpx.post(url + "/rerank", json.dumps({"query": "q", "documents": []}).encode(),
                         {"Content-Type": "application/json"})
        assert bad.status_code == 400
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "autoglm", "rerank", "pets at home", "--file", str(docs), "--json",
                          "--top", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["index"] in (0, 2) and "embedding" in out.stderr
