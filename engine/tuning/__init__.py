"""Measured tuning: which llama.cpp settings run a model fastest here, found by trying them."""
