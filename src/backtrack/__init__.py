"""backtrack: local backtracking for LLM decoding."""

__version__ = "0.1.0"
