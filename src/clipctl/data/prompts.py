"""Prompt templates: one dialect for training and evaluation.

A template holds the field ``{prompt}``, replaced literally by the problem
text; every other character, braces included, stays as written (so
``"... within \\boxed{}."`` needs no escaping). ``{problem}`` is accepted as
an alias: ``normalize_template`` rewrites it to ``{prompt}`` when a template
is loaded, so the two spellings give the same prompts and the same recorded
settings.
"""

from __future__ import annotations

from clipctl.errors import ConfigError

FIELD = "{prompt}"
ALIAS = "{problem}"


def normalize_template(template: str) -> str:
    """``template`` with its ``{problem}`` alias written as ``{prompt}``.

    Raises:
        ConfigError: neither spelling is present, so the problem would be lost.
    """
    text = template.replace(ALIAS, FIELD)
    if FIELD not in text:
        raise ConfigError(f"template {template!r} must contain {FIELD} (or its alias {ALIAS})")
    return text


def fill_template(template: str, problem: str) -> str:
    """The prompt text of one problem: each ``{prompt}`` (or ``{problem}``) replaced by ``problem``."""
    return template.replace(ALIAS, FIELD).replace(FIELD, problem)


def format_prompt(problem: str, template: str, tokenizer, chat_template: str) -> str:
    """Template, then the tokenizer's chat template (``auto``: when it has one; ``true``; ``false``)."""
    text = fill_template(template, problem)
    use_chat = chat_template == "true" or (chat_template == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text
