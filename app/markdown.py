"""Chat turns as HTML for a QTextBrowser: Markdown (markdown-it-py, CommonMark with tables and
strikethrough), code blocks highlighted by Pygments with a copy link each, turns set apart.

QTextBrowser renders a subset of HTML 4 with inline styles, so the turns are one-cell tables with a
background (its divs take none) and the highlighting uses inline colours, not CSS classes. Model
output is untrusted text: markdown-it escapes raw HTML (``html=False``), so a reply cannot inject
markup, images from the network or links other than http(s)/mailto.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name, guess_lexer
from pygments.util import ClassNotFound

COPY_SCHEME = "copy"  # <a href="copy:T.K"> copies code block K of turn T
GUESS_CHARS = 2000  # an unlabeled block's language is guessed from its start: guessing runs every lexer


@dataclass
class Palette:
    user_bg: str
    assistant_bg: str
    text: str
    muted: str
    code_bg: str
    link: str
    pygments_style: str


LIGHT = Palette("#e8f0fe", "#f6f6f6", "#1f1f1f", "#707070", "#fbfbfb", "#1a5fb4", "friendly")
DARK = Palette("#27344a", "#2b2b2b", "#e6e6e6", "#9a9a9a", "#1e1e1e", "#78aeed", "monokai")


@dataclass
class Rendered:
    html: str
    code_blocks: dict[str, str] = field(default_factory=dict)  # "T.K" -> the raw code behind that copy link


class _SafeLinks(MarkdownIt):
    """Links a model writes are clickable only to the web and mail: no file:, javascript: or data:."""

    def validateLink(self, url: str) -> bool:  # noqa: N802 - markdown-it's name
        return url.lower().startswith(("http://", "https://", "mailto:"))


class TranscriptRenderer:
    def __init__(self, palette: Palette = LIGHT) -> None:
        self.palette = palette
        # finished turns never change: their HTML is kept, so a streaming reply re-renders only itself
        # (a long conversation with code took 0.4 s a render, and streaming renders every 50 ms)
        self._turns: dict[tuple[int, str, str, str | None], tuple[str, list[str]]] = {}
        self.md = _SafeLinks("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])

    def _code(self, code: str, lang: str, blocks: list[str], turn: int) -> str:
        try:
            lexer = get_lexer_by_name(lang) if lang else guess_lexer(code[:GUESS_CHARS])
        except ClassNotFound:
            lexer = TextLexer()
        if not lang and lexer.analyse_text(code[:GUESS_CHARS]) < 0.3:  # a weak guess colours prose like code
            lexer = TextLexer()
        body = highlight(code, lexer, HtmlFormatter(noclasses=True, nowrap=True, style=self.palette.pygments_style))
        index = len(blocks)
        blocks.append(code)
        p = self.palette
        label = html.escape(lang or getattr(lexer, "name", "text").lower())
        return (f'<table width="100%" cellpadding="6" cellspacing="0" bgcolor="{p.code_bg}" '
                f'style="margin: 4px 0;"><tr><td><span style="color:{p.muted}; font-size:small;">{label}</span>'
                f'&nbsp;&nbsp;<a href="{COPY_SCHEME}:{turn}.{index}" style="color:{p.link}; font-size:small;">Copy</a>'
                f'<pre style="margin:2px 0 0 0;">{body}</pre></td></tr></table>')

    def markdown(self, text: str, blocks: list[str], turn: int = 0) -> str:
        tokens = self.md.parse(text)
        out: list[str] = []
        start = 0
        for i, tok in enumerate(tokens):  # code fences become highlighted tables; the rest stays markdown-it's
            if tok.type in ("fence", "code_block") and tok.level == 0:
                out.append(self.md.renderer.render(tokens[start:i], self.md.options, {}))
                out.append(self._code(tok.content.rstrip("\n"), tok.info.strip().split(" ")[0], blocks, turn))
                start = i + 1
        out.append(self.md.renderer.render(tokens[start:], self.md.options, {}))
        return "".join(out)

    def turn(self, index: int, role: str, content: str, stats: str | None) -> tuple[str, list[str]]:
        """One turn's HTML and its code blocks (copy links ``copy:index.K``)."""
        p = self.palette
        blocks: list[str] = []
        who, bg = {"user": ("You", p.user_bg), "tool": ("Tool", p.code_bg)}.get(role, ("Assistant", p.assistant_bg))
        body = self.markdown(content, blocks, index) if content else f'<span style="color:{p.muted};">…</span>'
        foot = f'<p style="color:{p.muted}; font-size:small; margin:0;">{html.escape(stats)}</p>' if stats else ""
        return (f'<table width="100%" cellpadding="10" cellspacing="0" bgcolor="{bg}" style="margin-bottom:8px;">'
                f'<tr><td><p style="margin:0 0 4px 0; color:{p.muted}; font-weight:600;">{who}</p>'
                f'<div style="color:{p.text};">{body}</div>{foot}</td></tr></table>'), blocks

    def render(self, turns: list[tuple[str, str, str | None]], streaming: bool = False) -> Rendered:
        """``turns``: (role, content, stats line or None), oldest first; with ``streaming`` the last is
        still growing, so it is rendered afresh and not kept."""
        parts: list[str] = []
        blocks: dict[str, str] = {}
        kept: dict[tuple[int, str, str, str | None], tuple[str, list[str]]] = {}
        for i, (role, content, stats) in enumerate(turns):
            key = (i, role, content, stats)
            done = self._turns.get(key) or self.turn(i, role, content, stats)
            if not (streaming and i == len(turns) - 1):
                kept[key] = done
            parts.append(done[0])
            blocks.update({f"{i}.{k}": code for k, code in enumerate(done[1])})
        self._turns = kept  # only what this conversation shows: bounded by it
        return Rendered("".join(parts), blocks)
