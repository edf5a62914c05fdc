"""Conversations in SQLite (WAL) in the data dir.

Every message is committed when it is complete (the user's when sent, the reply when it ends), so
killing the app mid-reply loses only the reply in progress, never a finished message.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from autoglm.engine import paths

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, system TEXT NOT NULL DEFAULT '',
    model TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, stats TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, id);
"""


@dataclass
class Message:
    id: int
    role: str
    content: str  # what the transcript shows (Markdown)
    stats: str | None = None
    data: str | None = None  # a tool turn's call and result as JSON, replayed to the model on later turns


@dataclass
class Conversation:
    id: int
    title: str
    system: str
    model: str | None


class ConversationStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.home() / "conversations.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: each write is durable alone
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(messages)")}
        if "data" not in columns:  # a store from before tool turns
            self.db.execute("ALTER TABLE messages ADD COLUMN data TEXT")

    def close(self) -> None:
        self.db.close()

    def new(self, title: str = "New chat", system: str = "", model: str | None = None) -> Conversation:
        now = time.time()
        cur = self.db.execute("INSERT INTO conversations(title, system, model, created, updated) VALUES (?,?,?,?,?)",
                              (title, system, model, now, now))
        return Conversation(int(cur.lastrowid or 0), title, system, model)

    def find(self, search: str = "") -> list[Conversation]:
        if search:
            rows = self.db.execute(
                "SELECT DISTINCT c.id, c.title, c.system, c.model FROM conversations c LEFT JOIN messages m "
                "ON m.conversation = c.id WHERE c.title LIKE ?1 OR m.content LIKE ?1 ORDER BY c.updated DESC",
                (f"%{search}%",))
        else:
            rows = self.db.execute("SELECT id, title, system, model FROM conversations ORDER BY updated DESC")
        return [Conversation(*r) for r in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        row = self.db.execute("SELECT id, title, system, model FROM conversations WHERE id = ?",
                              (conversation_id,)).fetchone()
        return Conversation(*row) if row else None

    def update(self, conversation_id: int, **fields: str | None) -> None:
        allowed = {k: v for k, v in fields.items() if k in ("title", "system", "model")}
        for key, value in allowed.items():
            self.db.execute(f"UPDATE conversations SET {key} = ?, updated = ? WHERE id = ?",  # noqa: S608 - fixed keys
                            (value, time.time(), conversation_id))

    def delete(self, conversation_id: int) -> None:
        self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def add(self, conversation_id: int, role: str, content: str, stats: str | None = None,
            data: str | None = None) -> Message:
        now = time.time()
        cur = self.db.execute("INSERT INTO messages(conversation, role, content, stats, created, data) "
                              "VALUES (?,?,?,?,?,?)", (conversation_id, role, content, stats, now, data))
        self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return Message(int(cur.lastrowid or 0), role, content, stats, data)

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.execute("SELECT id, role, content, stats, data FROM messages WHERE conversation = ? "
                               "ORDER BY id", (conversation_id,))
        return [Message(*r) for r in rows]

    def truncate_after(self, conversation_id: int, message_id: int) -> None:
        """Drop ``message_id`` and everything after it (regenerate, edit and resend)."""
        self.db.execute("DELETE FROM messages WHERE conversation = ? AND id >= ?", (conversation_id, message_id))
