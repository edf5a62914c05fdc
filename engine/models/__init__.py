"""The model store and its install jobs. The public API (pull, resolve, installed, rollback, ...)
lives in ``engine.models.manager``; this package file stays empty so that importing a low-layer
module (the store, GGUF facts) never drags the install jobs in with it."""
