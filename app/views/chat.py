"""Chat view: conversations on the left, the transcript (Markdown) and the composer on the right.

Replies stream from the engine child on a worker thread; pieces reach the UI through queued Qt
signals and the transcript is re-rendered at most every 50 ms, so typing and resizing stay smooth.
The transcript follows the newest text unless the user has scrolled up to read; each code block
has a Copy link; a new conversation gets a short title from the model after its first reply (the
user's rename always wins). Keys: Enter sends, Shift+Enter starts a new line, Esc stops the reply,
Ctrl+N starts a new chat.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.background import in_background, on_ui
from autoglm.app.conversations import ConversationStore, Message
from autoglm.app.engine_process import EngineClient
from autoglm.app.markdown import COPY_SCHEME, DARK, LIGHT, TranscriptRenderer
from autoglm.app.theme import is_dark
from autoglm.app.widgets import two_panes

RENDER_EVERY_MS = 50
NEW_TITLE = "New chat"
TITLE_PROMPT = ("Write a title of at most six words for a conversation that begins with this message. Reply with "
                "the title only, no quotes.\n\n{message}")
BOTTOM_SLACK = 8  # pixels: within this of the end, the transcript counts as following the reply
SHOWN_CHARS = 600  # of a tool's result in the transcript (the model reads it all)


def fallback_title(text: str, limit: int = 40) -> str:
    """The first line, cut at a word: the title until (or if) the model gives a better one."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + "…"


def clean_title(raw: str) -> str | None:
    """A model's title, tidied; None when it gave nothing usable."""
    title = " ".join(raw.replace("*", "").replace("#", "").split()).strip(" \"'.:")
    if title.lower().startswith("title"):
        title = title[5:].lstrip(" :-")
    words = title.split()
    return " ".join(words[:8]) if 1 <= len(words) and len(title) >= 3 else None


class _ComposerKeys(QObject):
    """Enter sends, Shift+Enter inserts a new line (as in every chat app)."""

    def __init__(self, send: Callable[[], None]) -> None:
        super().__init__()
        self.send = send

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.send()
                return True
        return False


class Phase(Enum):
    IDLE = "idle"
    WAITING = "waiting"  # sent; the reply starts when the engine is back (with this chat's model)
    STREAMING = "streaming"


@dataclass
class Reply:
    """The reply in flight, as one state (GPT4All's ResponseState) instead of flags that had to
    agree: its phase, text so far, timing and the event that stops it."""

    phase: Phase = Phase.IDLE
    text: str = ""
    pieces: int = 0
    started: float = 0.0
    first_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    earlier: list[Turn] = field(default_factory=list)  # the turns before ``text``: tool calls and what came before

    def add(self, piece: str) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.text += piece
        self.pieces += 1

    def summary(self) -> tuple[int, float, float, str]:
        """(tokens, tokens/s, time to first token in ms, the line shown under the reply)."""
        end = time.perf_counter()
        ttft = ((self.first_at or end) - self.started) * 1000
        rate = (self.pieces - 1) / (end - self.first_at) if self.first_at and end > self.first_at else 0.0
        stopped = " · stopped" if self.cancel.is_set() else ""
        return self.pieces, rate, ttft, f"{self.pieces} tokens · {rate:.1f} tok/s · first token {ttft:.0f} ms{stopped}"

    def tool_step(self, step: dict[str, Any]) -> None:
        """A call of an MCP tool, and later its result, as a "tool" turn of the transcript: the text
        said before it stays an assistant turn of its own."""
        if step["kind"] == "call":
            if self.text:
                self.earlier.append(Turn("assistant", self.text))
                self.text = ""
            self.earlier.append(Turn("tool", f"**{step['name']}** · MCP server *{step['server']}*\n\n"
                                     + fenced(step["arguments"], "json"),
                                     {k: step[k] for k in ("id", "name", "arguments")}))
        elif step["kind"] == "result":
            turn = next((t for t in self.earlier if t.data and t.data["id"] == step["id"]), None)
            if turn is not None and turn.data is not None:
                shown = step["text"] if len(step["text"]) <= SHOWN_CHARS else step["text"][:SHOWN_CHARS] + " …"
                turn.text += f"\n\n{'Failed' if step['failed'] else 'Result'}:\n\n{fenced(shown)}"
                turn.data["result"] = step["text"]
        elif step["kind"] == "notice":
            self.earlier.append(Turn("tool", f"*{step['text']}*"))

    def turns(self) -> list[tuple[str, str]]:
        return [*((t.role, t.text) for t in self.earlier), ("assistant", self.text)]


@dataclass
class Turn:
    """A finished part of a reply: text, or a tool turn (``data``: the call and its result)."""

    role: str
    text: str
    data: dict[str, Any] | None = None


def history(stored: list[Message]) -> list[dict[str, Any]]:
    """A conversation as the engine takes it: a tool turn becomes the call the assistant made and
    the tool's result, so the model knows on later turns that it has tools and what they said."""
    messages: list[dict[str, Any]] = []
    for m in stored:
        if m.role != "tool":
            messages.append({"role": m.role, "content": m.content})
            continue
        call = json.loads(m.data) if m.data else {}
        if "result" in call:  # (a notice, or a call the reply was stopped before it ran, has none)
            function = {"name": call["name"], "arguments": call["arguments"]}
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"id": call["id"], "type": "function", "function": function}]})
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["name"],
                             "content": call["result"]})
    return messages


def fenced(text: str, lang: str = "text") -> str:
    """``text`` as a code block whose fence no backtick run inside it can close."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


class ChatView(QWidget):
    reply_finished = Signal()
    measured = Signal(int, float, float)  # tokens, tokens/s, time to first token (ms)
    model_needed = Signal(str)  # this chat's model is not the one the engine serves: restart it with this one
    titled = Signal(int)  # a conversation's automatic title came back (or failed)

    def __init__(self, store: ConversationStore, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.store, self.client = store, client
        self.conversation_id: int | None = None
        self.current = Reply()  # the reply in flight (phase IDLE: none)
        self.serving: str | None = None  # the model the engine child serves now
        self.render_timer = QTimer(self, interval=RENDER_EVERY_MS)
        self.render_timer.timeout.connect(self._render_if_dirty)
        self.dirty = False
        self.code_blocks: dict[str, str] = {}
        self.renderers = {False: TranscriptRenderer(LIGHT), True: TranscriptRenderer(DARK)}
        self.renamed_by_user: set[int] = set()
        self.tools: list[dict[str, Any]] = []  # the MCP servers' tools the engine offers (config.toml)
        self.asking: str | None = None  # the id of the tool call waiting for the user's yes or no

        self.search = QLineEdit(placeholderText="Search conversations")
        self.search.textChanged.connect(self.refresh_list)
        self.list = QListWidget()
        self.list.currentItemChanged.connect(self._on_select)
        new_btn, rename_btn, delete_btn = QPushButton("New"), QPushButton("Rename"), QPushButton("Delete")
        new_btn.clicked.connect(self.new_conversation)
        rename_btn.clicked.connect(self._rename)
        delete_btn.clicked.connect(self._delete)
        left = QVBoxLayout()
        left.addWidget(self.search)
        left.addWidget(self.list)
        row = QHBoxLayout()
        for b in (new_btn, rename_btn, delete_btn):
            row.addWidget(b)
        left.addLayout(row)

        self.system = QLineEdit(placeholderText="System prompt (optional)")
        self.system.editingFinished.connect(self._save_system)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, value=0.7, prefix="temperature ")
        self.model = QComboBox(sizeAdjustPolicy=QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model.setToolTip("the model for this chat; switching restarts the engine with it")
        self.model.activated.connect(self.choose_model)
        self.transcript = QTextBrowser(openLinks=False)
        self.transcript.anchorClicked.connect(self._anchor)
        self.input = QPlainTextEdit(placeholderText="Message (Enter sends, Shift+Enter for a new line)")
        self.input.setMaximumHeight(110)
        self._keys = _ComposerKeys(self.send)
        self.input.installEventFilter(self._keys)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        QShortcut(QKeySequence.StandardKey.New, self, self.new_conversation)
        self.send_btn, self.stop_btn = QPushButton("Send"), QPushButton("Stop")
        self.regen_btn, self.edit_btn, self.copy_btn = QPushButton("Regenerate"), QPushButton("Edit last"), \
            QPushButton("Copy reply")
        self.send_btn.clicked.connect(self.send)
        self.stop_btn.clicked.connect(self.stop)
        self.regen_btn.clicked.connect(self.regenerate)
        self.edit_btn.clicked.connect(self.edit_last)
        self.copy_btn.clicked.connect(self.copy_reply)
        self.stop_btn.setEnabled(False)
        # asked before a tool of an untrusted MCP server runs; "Always" trusts that server for good
        self.ask_label = QLabel(wordWrap=True)
        self.allow_btn, self.deny_btn, self.always_btn = QPushButton("Run it"), QPushButton("Don't run"), \
            QPushButton("Always for this server")
        self.ask_bar = QWidget()
        ask_row = QHBoxLayout(self.ask_bar)
        ask_row.setContentsMargins(0, 0, 0, 0)
        ask_row.addWidget(self.ask_label, 1)
        for b, decision in ((self.allow_btn, "yes"), (self.deny_btn, "no"), (self.always_btn, "always")):
            b.clicked.connect(partial(self.answer, decision))
            ask_row.addWidget(b)
        self.ask_bar.hide()
        right = QVBoxLayout()
        settings = QHBoxLayout()
        settings.addWidget(self.system, 1)
        settings.addWidget(self.model)
        settings.addWidget(self.temperature)
        right.addLayout(settings)
        right.addWidget(self.transcript, 1)
        right.addWidget(self.ask_bar)
        right.addWidget(self.input)
        buttons = QHBoxLayout()
        for b in (self.send_btn, self.stop_btn, self.regen_btn, self.edit_btn, self.copy_btn):
            buttons.addWidget(b)
        right.addLayout(buttons)

        two_panes(self, left, right)
        self.refresh_list()

    # --- conversations ------------------------------------------------------------------------
    def refresh_list(self) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for conv in self.store.find(self.search.text()):
            item = QListWidgetItem(conv.title)
            item.setData(Qt.ItemDataRole.UserRole, conv.id)
            self.list.addItem(item)
            if conv.id == self.conversation_id:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def new_conversation(self) -> None:
        conv = self.store.new(system=self.system.text(), model=self.model.currentText() or None)
        self.open(conv.id)

    def open(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        conv = self.store.get(conversation_id)
        self.system.setText(conv.system if conv else "")
        if conv and conv.model and self.model.findText(conv.model) >= 0:
            self.model.setCurrentText(conv.model)
        self.refresh_list()
        self.show_transcript()

    # --- models -------------------------------------------------------------------------------
    def set_models(self, names: list[str], serving: str | None = None) -> None:
        """The installed chat models to choose from; the current choice stays where it still exists."""
        chosen, serving = self.model.currentText(), serving or self.serving
        self.model.clear()
        self.model.addItems(names if not serving or serving in names else [serving, *names])
        self.model.setCurrentText(chosen if chosen in names else serving or "")

    @property
    def streaming(self) -> bool:
        return self.current.phase is Phase.STREAMING

    @property
    def pending(self) -> bool:
        return self.current.phase is Phase.WAITING

    @property
    def busy(self) -> bool:
        return self.current.phase is not Phase.IDLE

    def engine_ready(self, serving: str) -> None:
        """The engine is up: its MCP tools are asked for first, so a reply waiting for it knows them."""
        self.serving = serving
        client = self.client()
        if client is None:
            return

        def ready(tools: dict[str, Any]) -> None:
            self.tools = list(tools.get("tools", []))
            for problem in tools.get("problems", []):
                self.transcript.append(f"\n⚠ {problem}")
            if self.pending:
                self.current = Reply()
                self._start_reply()

        def failed(message: str) -> None:  # a broken [mcp] table: chat goes on without tools, saying why
            self.transcript.append(f"\n⚠ MCP tools are off: {message}")
            ready({})

        in_background(client.mcp_tools, ready, failed, name="chat-tools")

    def engine_failed(self, message: str) -> None:
        if self.pending:
            self._on_failed(message)

    def choose_model(self, _index: int = -1) -> None:
        name = self.model.currentText()
        if self.conversation_id is not None:
            self.store.update(self.conversation_id, model=name)
        if name and name != self.serving and not self.streaming:
            self.model_needed.emit(name)  # load it now, while the user types

    def _on_select(self, item: QListWidgetItem | None) -> None:
        if item is not None and not self.streaming:
            self.open(int(item.data(Qt.ItemDataRole.UserRole)))

    def _rename(self) -> None:
        if self.conversation_id is None:
            return
        conv = self.store.get(self.conversation_id)
        title, ok = QInputDialog.getText(self, "Rename", "Title:", text=conv.title if conv else "")
        if ok and title.strip():
            self.rename(self.conversation_id, title.strip())

    def rename(self, conversation_id: int, title: str) -> None:
        self.renamed_by_user.add(conversation_id)  # an automatic title arriving later does not replace it
        self.store.update(conversation_id, title=title)
        self.refresh_list()

    def _delete(self) -> None:
        if self.conversation_id is not None and not self.streaming:
            self.store.delete(self.conversation_id)
            self.conversation_id = None
            self.refresh_list()
            self.show_transcript()

    def _save_system(self) -> None:
        if self.conversation_id is not None:
            self.store.update(self.conversation_id, system=self.system.text())

    # --- messages -----------------------------------------------------------------------------
    def show_transcript(self) -> None:
        turns: list[tuple[str, str, str | None]] = []
        if self.conversation_id is not None:
            turns = [(m.role, m.content, m.stats) for m in self.store.messages(self.conversation_id)]
        if self.streaming:
            turns += [(role, text, None) for role, text in self.current.turns()]
        bar = self.transcript.verticalScrollBar()
        following = bar.value() >= bar.maximum() - BOTTOM_SLACK
        kept = bar.value()
        rendered = self.renderers[is_dark()].render(turns, streaming=self.streaming)
        self.code_blocks = rendered.code_blocks
        self.transcript.setHtml(rendered.html)
        bar.setValue(bar.maximum() if following else kept)  # a user reading above keeps their place
        self.dirty = False

    def _anchor(self, url: QUrl) -> None:
        if url.scheme() == COPY_SCHEME:
            if url.path() in self.code_blocks:  # a stale link (another conversation) does nothing
                QGuiApplication.clipboard().setText(self.code_blocks[url.path()])
        elif url.scheme() in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)

    def _render_if_dirty(self) -> None:
        if self.dirty:
            self.show_transcript()

    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.busy:
            return
        if self.conversation_id is None:
            self.new_conversation()
        assert self.conversation_id is not None
        if not self.store.messages(self.conversation_id):
            self.store.update(self.conversation_id, title=fallback_title(text))
        self.store.add(self.conversation_id, "user", text)  # committed before the reply starts
        self.input.clear()
        self._start_reply()

    def regenerate(self) -> None:
        if self.streaming or self.conversation_id is None:
            return
        msgs = self.store.messages(self.conversation_id)
        asked = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1)
        if 0 <= asked < len(msgs) - 1:  # the whole reply goes: its tool turns too
            self.store.truncate_after(self.conversation_id, msgs[asked + 1].id)
            self._start_reply()

    def edit_last(self) -> None:
        """Put the last user message back in the composer and drop it (and its reply)."""
        if self.streaming or self.conversation_id is None:
            return
        users = [m for m in self.store.messages(self.conversation_id) if m.role == "user"]
        if users:
            self.store.truncate_after(self.conversation_id, users[-1].id)
            self.input.setPlainText(users[-1].content)
            self.show_transcript()

    def copy_reply(self) -> None:
        if self.conversation_id is None:
            return
        replies = [m for m in self.store.messages(self.conversation_id) if m.role == "assistant"]
        if replies:
            QGuiApplication.clipboard().setText(replies[-1].content)

    def _start_reply(self) -> None:
        wanted = self.model.currentText()
        if wanted and self.serving and wanted != self.serving:  # a chat opened with another model
            self.current = Reply(Phase.WAITING)
            self.transcript.append(f"\nloading {wanted}…")
            self.model_needed.emit(wanted)
            return
        client = self.client()
        if client is None:
            if self.pending or self.serving is None:  # the engine is (re)starting: reply once it is up
                self.current = Reply(Phase.WAITING)
                return
            self._on_failed("the engine is not running")
            return
        assert self.conversation_id is not None
        messages = history(self.store.messages(self.conversation_id))
        if self.system.text().strip():
            messages.insert(0, {"role": "system", "content": self.system.text().strip()})
        self.current = reply = Reply(Phase.STREAMING, started=time.perf_counter())
        self._set_busy(True)
        self.render_timer.start()
        self.show_transcript()
        cancel, temperature = reply.cancel, self.temperature.value()

        def work() -> None:
            if not self.tools:
                for piece in client.chat_stream(messages, cancel=cancel, max_tokens=1024, temperature=temperature):
                    on_ui(partial(self._on_piece, reply, piece))
                return
            for step in client.agent_stream(messages, cancel=cancel, max_tokens=1024, temperature=temperature):
                on_ui(partial(self._on_step, reply, step))

        in_background(work, lambda _: self._on_done(""), self._on_failed, name="chat-stream")

    def _on_piece(self, reply: Reply, piece: str) -> None:
        reply.add(piece)  # its own reply: a late piece of a stopped stream never joins the next one
        self.dirty = True

    def _on_step(self, reply: Reply, step: dict[str, Any]) -> None:
        if step["kind"] == "text":
            self._on_piece(reply, step["text"])
        elif step["kind"] == "ask":
            if reply is self.current:
                self.asking = step["id"]
                self.ask_label.setText(f"Run {step['name']} on the MCP server {step['server']}?")
                self.ask_bar.show()
        else:
            reply.tool_step(step)
            self.dirty = True

    def answer(self, decision: str) -> None:
        """The user's yes, no or always for the tool call waiting; the reply goes on in the engine."""
        client, call_id = self.client(), self.asking
        self.asking = None
        self.ask_bar.hide()
        if client is not None and call_id is not None:
            in_background(lambda: client.answer(call_id, decision), lambda _: None,
                          lambda message: self.transcript.append(f"\n⚠ {message}"), name="chat-answer")

    def _finish(self, stats: str | None) -> None:
        self.asking = None
        self.ask_bar.hide()
        if self.conversation_id is not None:
            for turn in self.current.earlier:
                self.store.add(self.conversation_id, turn.role, turn.text,
                               data=json.dumps(turn.data, ensure_ascii=False) if turn.data else None)
        if self.conversation_id is not None and self.current.text:
            self.store.add(self.conversation_id, "assistant", self.current.text, stats)
            if sum(m.role == "user" for m in self.store.messages(self.conversation_id)) == 1:
                self.name_conversation(self.conversation_id)
        self.current = Reply()
        self.render_timer.stop()
        self._set_busy(False)
        self.refresh_list()
        self.show_transcript()
        self.reply_finished.emit()

    def name_conversation(self, conversation_id: int) -> None:
        """Ask the model for a short title after the first reply; a rename by the user meanwhile wins."""
        client = self.client()
        first = next((m.content for m in self.store.messages(conversation_id) if m.role == "user"), "")
        if client is None or not first:
            return
        messages = [{"role": "user", "content": TITLE_PROMPT.format(message=first[:1000])}]

        def work() -> str | None:
            return clean_title("".join(client.chat_stream(messages, max_tokens=16, temperature=0.0)))

        def done(title: str | None) -> None:
            if title and conversation_id not in self.renamed_by_user and self.store.get(conversation_id):
                self.store.update(conversation_id, title=title)
                self.refresh_list()
            self.titled.emit(conversation_id)

        in_background(work, done, lambda _msg: self.titled.emit(conversation_id), name="chat-title")

    def _on_done(self, _unused: str) -> None:
        tokens, rate, ttft, line = self.current.summary()
        self.measured.emit(tokens, rate, ttft)
        self._finish(line)

    def _on_failed(self, message: str) -> None:
        self._finish(None)
        self.transcript.append(f"\n⚠ {message}")

    def stop(self) -> None:
        """Esc or Stop: a streaming reply ends where it is; one still waiting for the engine is dropped."""
        if self.pending:
            self.current = Reply()
        self.current.cancel.set()

    def _set_busy(self, busy: bool) -> None:
        self.send_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy)
        for b in (self.regen_btn, self.edit_btn):
            b.setEnabled(not busy)
