"""Shared by the data tests: a tokenizer that needs no model files."""

import pytest


class CharTokenizer:
    """Enough of a tokenizer for data loading: one id per character."""

    chat_template = None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 97 for c in t] for t in texts]}


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()
