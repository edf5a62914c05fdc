"""Chat with your documents: collections of files indexed on the device (SQLite: FTS5 for keywords,
embeddings for meaning), hybrid retrieval, and answers that cite their passages."""
