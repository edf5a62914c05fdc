"""The main window: views in tabs, a banner when the engine child dies, engine start off the UI thread;
a View menu for the theme, Settings for the engine's options, and the window's size, position and
tab remembered between launches."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction, QActionGroup, QGuiApplication
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from autoglm.app import settings, theme
from autoglm.app.background import in_background
from autoglm.app.conversations import ConversationStore
from autoglm.app.engine_process import EngineClient, EngineProcess
from autoglm.app.icons import app_icon
from autoglm.app.screenshots import take
from autoglm.app.views import fetch
from autoglm.app.views.catalog import CatalogView
from autoglm.app.views.chat import ChatView
from autoglm.app.views.classify import ClassifyView
from autoglm.app.views.device import DeviceView
from autoglm.app.views.documents import DocumentsView
from autoglm.app.views.extract import ExtractView
from autoglm.app.views.models import ModelsView
from autoglm.app.views.performance import PerformanceView
from autoglm.app.views.welcome import SAMPLE_CHAT, SAMPLE_LABELS, SAMPLE_TEXTS, WelcomeView


class MainWindow(QMainWindow):
    def __init__(self, engine: EngineProcess, store: ConversationStore) -> None:
        super().__init__()
        self.setWindowTitle("Open-AutoGLM")
        self.setWindowIcon(app_icon())
        self.resize(1100, 720)
        self.engine, self.store = engine, store
        self.remember_state = True  # off while taking screenshots
        self.closed = False  # an engine start finishing after close must not touch deleted widgets
        self._client: EngineClient | None = None

        self.banner = QFrame()
        self.banner.setObjectName("banner")
        self.banner.setStyleSheet("#banner { background: #fde2e1; border: 1px solid #e0a0a0; } "
                                  "#banner QLabel { color: #5a1a1a; }")
        self.banner_text = QLabel(wordWrap=True)
        self.restart_btn = QPushButton("Restart in safe mode")
        self.restart_btn.clicked.connect(self.restart_safe)
        row = QHBoxLayout(self.banner)
        row.addWidget(self.banner_text, 1)
        row.addWidget(self.restart_btn)
        self.banner.hide()

        self.chat = ChatView(store, self.client)
        self.chat.model_needed.connect(self.switch_model)
        self.models = ModelsView(self.client)
        self.models.done.connect(self._refresh_chat_models)
        self.classify = ClassifyView(self.client)
        self.documents = DocumentsView(self.client)
        self.extract = ExtractView(self.client)
        self.catalog = CatalogView(self.client)
        self.catalog.pull_requested.connect(self.pull_from_catalog)
        self.device = DeviceView(self.client)
        self.device.apply_requested.connect(self.apply_overrides)
        self.performance = PerformanceView()
        self.chat.measured.connect(self.performance.record)
        self.classify.measured.connect(self.performance.record_classify)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.chat, "Chat")
        self.tabs.addTab(self.documents, "Documents")
        self.tabs.addTab(self.classify, "Classify")
        self.tabs.addTab(self.extract, "Extract")
        self.tabs.addTab(self.catalog, "Catalog")
        self.tabs.addTab(self.models, "Models")
        self.tabs.addTab(self.device, "Device")
        self.tabs.addTab(self.performance, "Performance")
        self.welcome = WelcomeView(self.engine.progress)
        self.welcome.sample_chat.connect(self.sample_chat)
        self.welcome.sample_classify.connect(self.sample_classify)
        self.welcome.dismissed.connect(self.dismiss_welcome)
        self.tabs.currentChanged.connect(self._tab_changed)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self._menus()
        self._restore_state()
        if str(settings.store().value("welcomed", "false")) != "true":
            self.show_welcome()
        hints = QGuiApplication.styleHints()
        if hasattr(hints, "colorSchemeChanged"):  # the OS switched between light and dark (Qt 6.5+)
            hints.colorSchemeChanged.connect(lambda *_: self.set_theme(settings.theme_mode(), save=False))
        self.watch = QTimer(self, interval=500)
        self.watch.timeout.connect(self._check_engine)
        self.start_engine()

    def show_welcome(self) -> None:
        if self.tabs.indexOf(self.welcome) < 0:
            self.tabs.insertTab(0, self.welcome, "Welcome")
        self.tabs.setCurrentWidget(self.welcome)
        if self._client is not None:
            fetch(self.client, EngineClient.device, self.welcome.install_label, self.welcome.engine_ready)

    def dismiss_welcome(self) -> None:
        self.tabs.removeTab(self.tabs.indexOf(self.welcome))
        store = settings.store()
        store.setValue("welcomed", "true")
        store.sync()

    def pull_from_catalog(self, source: str) -> None:
        """The Models view runs the pull: its progress bar, cancel and the refreshed list."""
        self.tabs.setCurrentWidget(self.models)
        self.models.pull(source)

    def sample_chat(self) -> None:
        self.tabs.setCurrentWidget(self.chat)
        self.chat.new_conversation()
        self.chat.input.setPlainText(SAMPLE_CHAT)
        self.chat.send()

    def sample_classify(self) -> None:
        self.tabs.setCurrentWidget(self.classify)
        self.classify.picker.setCurrentIndex(0)  # zero-shot
        self.classify.labels.setText(SAMPLE_LABELS)
        self.classify.input.setPlainText("\n".join(SAMPLE_TEXTS))
        self.classify.classify(SAMPLE_TEXTS)

    def _menus(self) -> None:
        view = self.menuBar().addMenu("&View")
        group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for mode in theme.MODES:
            action = QAction(f"{mode.capitalize()} theme" if mode != "system" else "Theme of the system", self,
                             checkable=True, checked=mode == settings.theme_mode())
            action.triggered.connect(lambda _=False, m=mode: self.set_theme(m))
            group.addAction(action)
            view.addAction(action)
            self.theme_actions[mode] = action
        tools = self.menuBar().addMenu("&Tools")
        tools.addAction("&Settings…", self.open_settings)
        tools.addAction("&Welcome", self.show_welcome)

    def set_theme(self, mode: str, save: bool = True) -> None:
        if save:
            store = settings.store()
            store.setValue("theme", mode)
            store.sync()
        app = QApplication.instance()
        assert isinstance(app, QApplication)  # the window exists, so its application does
        theme.apply(app, mode)
        self.theme_actions[mode].setChecked(True)
        self.chat.show_transcript()  # the transcript's HTML carries its colours
        self.performance.update()

    def open_settings(self) -> None:
        dialog = settings.SettingsDialog(self)
        if dialog.exec():
            mode, engine_changed = dialog.save()
            self.set_theme(mode, save=False)
            if engine_changed:
                self._apply_engine_settings()
                self.start_engine()

    def _apply_engine_settings(self) -> None:
        chosen = settings.engine_options()
        options = self.engine.options
        options.threads, options.ctx, options.gpu_layers = chosen["threads"], chosen["ctx"], chosen["gpu_layers"]
        options.parallel = chosen["parallel"] or options.parallel
        options.safe = bool(chosen["safe"])

    def _restore_state(self) -> None:
        store = settings.store()
        geometry = store.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        tab = str(store.value("window/tab", ""))  # by name: the Welcome tab comes and goes
        for index in range(self.tabs.count()):
            if self.tabs.tabText(index) == tab:
                self.tabs.setCurrentIndex(index)
        self._apply_engine_settings()

    def _save_state(self) -> None:
        if not self.remember_state:
            return
        store = settings.store()
        store.setValue("window/geometry", self.saveGeometry())
        store.setValue("window/tab", self.tabs.tabText(self.tabs.currentIndex()))
        store.sync()

    def _tab_changed(self, index: int) -> None:
        widget = self.tabs.widget(index)
        if widget is self.models:
            self.models.refresh()
        elif widget is self.classify:
            self.classify.refresh()
        elif widget is self.catalog:
            self.catalog.refresh()
        elif widget is self.device:
            self.device.refresh()

    def client(self) -> EngineClient | None:
        return self._client if self.engine.alive else None

    def start_engine(self) -> None:
        """Model loading takes seconds: it runs on a thread, the window stays live meanwhile."""
        self._client = None
        self.chat.serving = None
        self.statusBar().showMessage("starting the engine…")

        def work() -> str:
            self.engine.start()
            return self.engine.client().served_model()

        in_background(work, self._on_started, self._on_crash, name="engine-start")

    def _on_started(self, serving: str) -> None:
        if self.closed:  # the window closed while the engine was starting: nothing left to update
            return
        self._client = self.engine.client()
        self.banner.hide()
        mode = " (safe mode)" if self.engine.options.safe else ""
        self.statusBar().showMessage(f"engine ready at {self.engine.url}: {serving}{mode}")
        self.models.refresh()
        self.chat.set_models(self._chat_models(), serving)
        self.chat.engine_ready(serving)
        self.classify.refresh()
        self.documents.refresh()
        self.device.refresh()
        if self.tabs.indexOf(self.welcome) >= 0:
            fetch(self.client, EngineClient.device, self.welcome.install_label, self.welcome.engine_ready)
        self.watch.start()

    def _check_engine(self) -> None:
        if self._client is not None and not self.engine.alive:
            self._on_crash(f"The engine stopped: {self.engine.describe_exit()}")

    def _on_crash(self, message: str) -> None:
        if self.closed:
            return
        self._client = None
        self.watch.stop()
        tail = "\n".join(self.engine.log_tail(4))
        self.banner_text.setText(message + (f"\n{tail}" if tail else ""))
        self.banner.show()
        self.statusBar().showMessage("the engine is not running")
        self.chat.engine_failed(message)
        self.welcome.engine_failed(message)

    def apply_overrides(self, threads: int | None, ctx: int | None, gpu_layers: int | None = None) -> None:
        """Device-view overrides take effect by restarting the engine child with them."""
        self.engine.options.threads, self.engine.options.ctx = threads, ctx
        self.engine.options.gpu_layers = gpu_layers
        self.start_engine()

    def _chat_models(self) -> list[str]:
        return [m["name"] for m in self.models.installed if m["format"] == "gguf"]

    def _refresh_chat_models(self) -> None:
        """A pull, quantization or delete changes what a chat can choose."""
        self.chat.set_models(self._chat_models())

    def switch_model(self, name: str) -> None:
        """The engine serves one model at a time (all its memory goes to that model's KV cache):
        a chat with another model restarts the child with it."""
        self.engine.options.model = name
        self.start_engine()

    def restart_safe(self) -> None:
        self.engine.options.safe = True
        self.banner.hide()
        self.start_engine()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.closed = True
        self._save_state()
        self.watch.stop()
        self.chat.stop()
        self.engine.stop()
        super().closeEvent(event)


def run(screenshots: str | None = None) -> int:
    """``autoglm gui [--screenshots DIR]``."""
    import sys
    from pathlib import Path

    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(sys.argv[:1])
    theme.apply(app, settings.theme_mode())
    store = ConversationStore()
    window = MainWindow(EngineProcess(), store)
    window.show()
    try:
        if screenshots:
            try:
                for path in take(window, Path(screenshots)):
                    print(path)
            except RuntimeError as exc:  # no screenshot of a broken view: say which and why
                print(f"autoglm: error: {exc}", file=sys.stderr)
                return 1
            finally:
                window.close()
            return 0
        return app.exec()
    finally:
        store.close()
