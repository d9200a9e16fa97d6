"""Item indexing: how an item is written as a short sequence of tokens an LLM can generate."""
