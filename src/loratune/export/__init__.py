"""Exports of a finished run for use without loratune: a plain transformers model, or its PEFT adapter."""
