"""Desktop GUI (PySide6, the ``gui`` extra). It drives the engine only through its client, with the
engine in a child process so a native crash never takes the window down."""
