"""Prompt templates (data.prompts): one dialect, {prompt} replaced literally; {problem} is its alias."""

import pytest

from clipctl.data.prompts import fill_template, format_prompt, normalize_template
from clipctl.data.registry import DATASETS
from clipctl.errors import ConfigError


class Chat:
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_templates_by_hand(char_tokenizer):
    # '{prompt}' is replaced literally: braces stay as written, no escaping.
    assert fill_template("Q: {prompt} in \\boxed{}", "1+1?") == "Q: 1+1? in \\boxed{}"
    assert fill_template("{prompt} {x} {{}}", "p") == "p {x} {{}}"
    assert format_prompt("2+2?", "Q: {prompt}", Chat(), "auto") == "<user>Q: 2+2?</user><assistant>"
    assert format_prompt("2+2?", "Q: {prompt}", Chat(), "true") == "<user>Q: 2+2?</user><assistant>"
    assert format_prompt("2+2?", "Q: {prompt}", Chat(), "false") == "Q: 2+2?"
    assert format_prompt("2+2?", "Q: {prompt}", char_tokenizer, "auto") == "Q: 2+2?"  # no chat template


@pytest.mark.parametrize("template", ["{problem}\nin \\boxed{}.", "Q: {problem} / {problem}", "{problem}"])
def test_problem_alias_equals_prompt(template, char_tokenizer):
    as_prompt = template.replace("{problem}", "{prompt}")
    assert normalize_template(template) == as_prompt
    assert fill_template(template, "1+1?") == fill_template(as_prompt, "1+1?")
    tok = char_tokenizer
    assert format_prompt("1+1?", template, tok, "auto") == format_prompt("1+1?", as_prompt, tok, "auto")


def test_template_without_field_is_an_error():
    with pytest.raises(ConfigError, match=r"template 'no field' must contain \{prompt\} \(or its alias \{problem\}\)"):
        normalize_template("no field")


def test_registry_templates_are_normalized():
    for d in DATASETS.values():
        assert normalize_template(d.template) == d.template
        assert fill_template(d.template, "What is 1+1?").startswith("What is 1+1?\n")
