"""Distillery: turn a big LLM's judgement into a small, fast classifier (placeholder; the API follows)."""
