"""The Prompter: what each prompt contains, what it must not contain, and where it ends."""

from __future__ import annotations

import pytest

from viprog.errors import UsageError
from viprog.policy import HEADER, Prompter, extract_program
from viprog.policy.extract import PROMPT_END
from viprog.policy.prompts import as_example

API = "class ImagePatch:\n    def find(self, object_name: str) -> list[ImagePatch]:\n        \"\"\"Returns patches.\"\"\"\n"
SEEDS = [("How many cats are there?", "def execute_command(image) -> int:\n    return len(ImagePatch(image).find('cat'))\n"),
         ("Is there a dog?", "def execute_command(image) -> str:\n    return 'yes'\n")]
QUERY = "What color is the car?"


class ChatTokenizer:
    """The two things a Prompter asks of a tokenizer: a chat template, and token counts."""

    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_few_shot_has_api_examples_and_ends_with_the_query_header():
    prompt = Prompter(API, SEEDS).few_shot(QUERY)
    assert prompt.startswith(API.strip()) and all(q in prompt for q, _ in SEEDS)
    assert prompt.endswith(f"# Query: {QUERY}\n{HEADER}\n")


def test_examples_are_shown_with_the_prompts_own_header():
    prompt = Prompter(API, SEEDS).few_shot(QUERY)
    assert "-> int:" not in prompt and prompt.count(HEADER) == len(SEEDS) + 1


def test_prompts_for_two_queries_share_everything_before_the_query():
    prompter = Prompter(API, SEEDS)
    a, b = prompter.few_shot(QUERY), prompter.few_shot("Is the cup red?")
    shared = len(a) - len(f"{QUERY}\n{PROMPT_END}")
    assert a[:shared] == b[:shared]


def test_an_example_for_the_asked_query_never_leaks_in():
    prompter = Prompter(API, SEEDS)
    leaked = "def execute_command(image):\n    return 'LEAKED'\n"
    prompt = prompter.few_shot(QUERY, extra=[("what color is the car", leaked), ("Is the sky blue?", leaked)])
    assert prompt.count("LEAKED") == 1 and "# Query: Is the sky blue?" in prompt


def test_a_seed_repeating_the_asked_query_is_left_out():
    prompt = Prompter(API, SEEDS).few_shot("how many  cats are there")
    assert "# Query: How many cats are there?" not in prompt


def test_short_prompt_is_the_query_without_api():
    short = Prompter(API, SEEDS).short(QUERY)
    assert "ImagePatch" not in short and short.endswith(PROMPT_END) and QUERY in short


def test_chat_style_uses_the_template_and_prefills_the_header():
    prompter = Prompter(API, SEEDS, style="chat", tokenizer=ChatTokenizer())
    prompt = prompter.few_shot(QUERY)
    assert prompt.startswith("<system>") and "<assistant>```python" in prompt
    assert prompt.endswith(f"```python\n{PROMPT_END}") and prompter.stop() == ("```",)


def test_chat_completion_extracts_like_a_completion_prompt():
    completion = "\n    return 'red'\n```\nThe car is red."
    assert extract_program(completion, "chat") == f"{HEADER}\n    return 'red'\n"


def test_chat_style_without_template_is_a_usage_error():
    with pytest.raises(UsageError, match="chat template"):
        Prompter(API, SEEDS, style="chat")


def test_completion_stops_end_the_function():
    stops = Prompter(API, SEEDS).stop()
    assert "\n#" in stops and "\ndef " in stops and not any(s.startswith("\n ") for s in stops)


def test_length_counts_tokens_with_a_tokenizer_and_chars_without():
    prompter = Prompter(API, SEEDS, tokenizer=ChatTokenizer())
    prompt = prompter.few_shot(QUERY)
    assert prompter.length(prompt) == len(prompt.split()) and Prompter(API, SEEDS).length(prompt) == len(prompt)


def test_describe_reports_both_prompt_lengths():
    info = Prompter(API, SEEDS).describe(QUERY)
    assert info["prompt/few_shot_length"] > info["prompt/short_length"] > 0 and info["prompt/examples"] == 2


def test_as_example_rewrites_only_the_header():
    assert as_example(SEEDS[0][1]).splitlines()[1] == SEEDS[0][1].splitlines()[1]


# Qwen2's pre-tokenizer: punctuation keeps the newlines that follow it (`):\n` is one piece)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_prompt_ends_on_a_token_boundary_of_its_own_examples():
    """The prompt's tokens are a prefix of the tokens of prompt + program body, under a
    BPE that merges `):` with the newline after it, as Qwen2's does. A prompt that stops
    at `):` breaks this: the model is asked to continue a split it never saw."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from viprog.finetune import completion_for

    prompter = Prompter(API, SEEDS)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([prompter.few_shot(q) + p for q, p in SEEDS] * 20,
                            trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    program = "def execute_command(image):\n    return len(ImagePatch(image).find('car'))\n"
    assert "):\n" in [bpe.decode([i]) for i in bpe.encode(program).ids]  # the merge this test is about
    for prompt in (prompter.few_shot(QUERY), prompter.short(QUERY)):
        ids = bpe.encode(prompt).ids
        assert bpe.encode(prompt + completion_for(prompt, program)).ids[:len(ids)] == ids
