"""The engine as a child process, and the HTTP client the GUI talks to it with.

A native crash in llama.cpp or onnxruntime kills only the child (``autoglm serve --port 0`` on
127.0.0.1 with a key made for this launch); the window reads how it ended (signal or exit code
and the last lines of its log) and can start it again, in safe mode if asked. Nothing here
imports Qt, so it is tested on its own and reused by any front end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.engine import paths
from autoglm.engine.process import module_command

LOG_TAIL = 12


class EngineError(Exception):
    """The engine child is not running, or answered with an error (message is for the user)."""


@dataclass
class EngineOptions:
    model: str | None = None
    safe: bool = False
    threads: int | None = None
    ctx: int | None = None
    gpu_layers: int | None = None  # -1: all
    parallel: int = 2
    extra: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        args = module_command("autoglm.engine.cli", "serve", "--port", "0", "--parallel", str(self.parallel))
        for flag, value in (("--model", self.model), ("--threads", self.threads), ("--ctx", self.ctx),
                            ("--gpu-layers", self.gpu_layers)):
            if value is not None:
                args += [flag, str(value)]
        # --grace 0: a window that closes (or restarts its engine) mid-reply has nobody to finish it for
        return args + ["--grace", "0"] + (["--safe"] if self.safe else []) + self.extra


class EngineProcess:
    def __init__(self, options: EngineOptions | None = None, log_path: Path | None = None) -> None:
        self.options = options or EngineOptions()
        self.log_path = log_path or paths.cache_dir() / "engine.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.key = ""

    def start(self, timeout: float = 300) -> str:
        """Start the child and wait for its banner; returns the base URL."""
        self.stop()
        self.key = secrets.token_urlsafe(24)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        proc = self.proc = subprocess.Popen(self.options.argv(), stdout=subprocess.PIPE, stderr=log, text=True,
                                            env={**os.environ, "AUTOGLM_API_KEY": self.key,
                                                 "AUTOGLM_MANAGE_KEY": self.key, "AUTOGLM_PROGRESS": "json"})
        log.close()
        banner: list[str] = []
        out = proc.stdout
        assert out is not None  # stdout=PIPE
        reader = threading.Thread(target=lambda: banner.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not banner or " on http" not in banner[0]:
            description = self.describe_exit() if proc.poll() is not None else "it did not start in time"
            self.stop()
            raise EngineError(f"the engine did not start: {description}")
        self.url = banner[0].split(" on ")[1].split()[0]
        return self.url

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def progress(self) -> tuple[str, int, int] | None:
        """The child's latest progress report while it starts (a first run installs the default model)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
                tail = fh.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(tail):
            if line.startswith('{"progress"'):
                try:
                    report = json.loads(line)
                    return str(report["progress"]), int(report["done"]), int(report["total"])
                except (ValueError, KeyError, TypeError):
                    return None
        return None

    def describe_exit(self) -> str:
        """How the child ended, in words a user can act on."""
        if self.proc is None:
            return "the engine was not started"
        code = self.proc.poll()
        if code is None:
            return "the engine is running"
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        tail = [ln for ln in self.log_tail() if ln.strip() and not ln.startswith('{"progress"')]
        return how + (f"; last log line: {tail[-1]}" if tail else "")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def client(self) -> EngineClient:
        return EngineClient(self.url, self.key, self)


class EngineClient:
    """Blocking calls, meant for worker threads; errors become EngineError with a readable message."""

    def __init__(self, url: str, key: str, process: EngineProcess | None = None) -> None:
        self.url, self.key, self.process = url, key, process

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            raise EngineError(message) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            why = self.process.describe_exit() if self.process and not self.process.alive else str(exc)
            raise EngineError(f"the engine is not answering ({why})") from None

    def get(self, path: str) -> Any:
        with self._request("GET", path) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        with self._request("POST", path, body) as resp:
            return json.loads(resp.read())

    def events(self, path: str, body: dict[str, Any], cancel: threading.Event | None = None,
               until_done: bool = False) -> Iterator[Any]:
        """The JSON objects of an SSE response; setting ``cancel`` closes the connection, which
        cancels the work in the engine."""
        finished = threading.Event()
        with self._request("POST", path, body) as resp:
            if cancel is not None:  # close the connection the moment cancel is set, even mid-read

                def watch() -> None:
                    while not finished.is_set():
                        if cancel.wait(0.2):
                            resp.close()
                            return

                threading.Thread(target=watch, daemon=True).start()
            try:
                done = False
                for raw in resp:
                    if cancel is not None and cancel.is_set():
                        return
                    line = raw.decode("utf-8", errors="replace").strip()
                    done = done or line == "data: [DONE]"
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield json.loads(line[6:])
                if until_done and not done and not (cancel is not None and cancel.is_set()):
                    # a reply cut off without its end is not a finished reply (the window would keep it so)
                    raise EngineError("the engine closed the connection before the reply ended")
            except (OSError, ValueError, AttributeError):
                if cancel is None or not cancel.is_set():
                    raise EngineError("the engine closed the connection") from None
            finally:
                finished.set()  # the watcher ends with the stream instead of waiting forever

    def chat_stream(self, messages: list[dict[str, str]], cancel: threading.Event | None = None,
                    **params: Any) -> Iterator[str]:
        """Text pieces of a streamed reply; an error event inside the stream (a request the engine
        found too costly, an engine stopping mid-reply) is an EngineError with the engine's words."""
        body = {"model": "default", "messages": messages, "stream": True, **params}
        for event in self.events("/v1/chat/completions", body, cancel, until_done=True):
            if "error" in event:
                raise EngineError(str((event["error"] or {}).get("message") or "the engine failed mid-reply"))
            delta = event["choices"][0].get("delta", {})
            if delta.get("content"):
                yield delta["content"]

    def agent_stream(self, messages: list[dict[str, str]], cancel: threading.Event | None = None,
                     **params: Any) -> Iterator[dict[str, Any]]:
        """A chat turn that may call the MCP servers' tools: its steps (``kind``: text, call, ask,
        result, notice), ending at ``done``. An ``ask`` waits for ``answer``; an error event is an
        EngineError with the engine's words."""
        body = {"model": "default", "messages": messages, **params}
        for event in self.events("/autoglm/agent", body, cancel):
            if "error" in event:
                raise EngineError(str((event["error"] or {}).get("message") or "the engine failed mid-reply"))
            if event.get("kind") == "done":
                return
            yield dict(event)
        if cancel is None or not cancel.is_set():
            raise EngineError("the engine closed the connection before the reply ended")

    def answer(self, call_id: str, decision: str) -> None:
        """Whether the tool call ``call_id`` of an ``agent_stream`` may run: yes, no or always."""
        self.post("/autoglm/agent/answer", {"id": call_id, "decision": decision})

    def mcp_tools(self) -> dict[str, Any]:
        """``tools`` (name, server, description, trusted) from config.toml's MCP servers, and ``problems``."""
        return dict(self.get("/autoglm/mcp"))

    def collections(self) -> list[dict[str, Any]]:
        """The document collections: name, encoder, roots, files, chunks."""
        return list(self.get("/autoglm/docs")["data"])

    def index_documents(self, collection: str, paths: list[str],
                        cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """One event per file (``path``, ``what``), then ``done``; ``cancel`` stops between files."""
        for event in self.events("/autoglm/docs/add", {"collection": collection, "paths": paths}, cancel):
            if "error" in event:
                raise EngineError(str(event["error"] or "indexing failed"))
            yield dict(event)

    def ask_documents(self, question: str, collection: str, cancel: threading.Event | None = None,
                      **params: Any) -> Iterator[str | dict[str, Any]]:
        """First the sources (``citations``: "[1] path, page N"; ``passages``: the hits they name),
        then the answer's text pieces."""
        body = {"question": question, "collection": collection, "stream": True, **params}
        for event in self.events("/v1/docs/ask", body, cancel, until_done=True):
            if "error" in event:
                raise EngineError(str((event["error"] or {}).get("message") or "the engine failed mid-answer"))
            if event.get("object") == "docs.citations":
                yield {"citations": list(event["citations"]), "passages": list(event["passages"])}
            elif event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                yield str(event["choices"][0]["delta"]["content"])

    def remove_collection(self, name: str) -> None:
        """The collection leaves the index (the files stay where they are)."""
        self.delete(f"/autoglm/docs/{_segment(name)}")

    def delete(self, path: str) -> Any:
        with self._request("DELETE", path) as resp:
            return json.loads(resp.read())

    # --- the engine's routes, one method each: the views name no path ------------------------------
    def served_model(self) -> str:
        return str(self.get("/v1/models")["data"][0]["id"])

    def device(self) -> dict[str, Any]:
        return dict(self.get("/autoglm/device"))

    def models(self) -> dict[str, Any]:
        """``data`` (the installed models) and ``quantize_targets``."""
        return dict(self.get("/autoglm/models"))

    def loaded(self) -> list[dict[str, Any]]:
        """The chat models the engine holds now (``name``, ``size``, ``active``, ``expires_at``)."""
        return list(self.get("/api/ps")["models"])

    def catalog(self) -> dict[str, Any]:
        return dict(self.get("/autoglm/catalog"))

    def catalog_search(self, query: str) -> dict[str, Any]:
        return dict(self.get(f"/autoglm/catalog/search?q={urllib.parse.quote(query, safe='')}"))

    def classify(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.post("/v1/classify", body))

    def extract(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.post("/v1/extract", body)["data"])

    def train_classifier(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.post("/autoglm/classifiers", body))

    def correct(self, classifier: str, fixes: list[dict[str, str]]) -> dict[str, Any]:
        return dict(self.post(f"/autoglm/classifiers/{_segment(classifier)}/corrections", {"corrections": fixes}))

    def pull(self, source: str, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Progress events, then ``installed`` (or ``error``); ``cancel`` stops the job."""
        return self.events("/autoglm/models/pull", {"source": source}, cancel)

    def quantize(self, model: str, to: str, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        return self.events(f"/autoglm/models/{_segment(model)}/quantize", {"to": to}, cancel)

    def convert(self, model: str, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        return self.events(f"/autoglm/models/{_segment(model)}/convert", {}, cancel)

    def verify(self, model: str) -> list[str]:
        """The files whose sha256 no longer matches (empty: all do)."""
        return list(self.post(f"/autoglm/models/{_segment(model)}/verify", {})["problems"])

    def rollback(self, model: str) -> dict[str, Any]:
        """``from`` and ``to``: the versions before and after."""
        return dict(self.post(f"/autoglm/models/{_segment(model)}/rollback", {}))

    def remove(self, model: str) -> None:
        self.delete(f"/autoglm/models/{_segment(model)}")


def _segment(name: str) -> str:
    """A model's name as one path segment: a name with a slash or a space never reaches another route."""
    return urllib.parse.quote(name, safe="")


