"""Headless mode: the OpenAI-compatible HTTP server (``autoglm serve``)."""
