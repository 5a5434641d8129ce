"""The one stop-string rule every backend shares (`viprog.policy.stops`), on strings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from viprog.policy.prompts import CHAT_STOP, COMPLETION_STOP
from viprog.policy.stops import body_start, cut_at_stop, eos_ids, stopped

STOPS = COMPLETION_STOP + CHAT_STOP


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("a = 1\n# x\ndef f", ("\ndef ", "\n#")) == ("a = 1", True)


def test_a_stop_before_any_code_is_ignored():
    """A restated header or a leading comment must not end the completion with an empty body."""
    text = "\n# Query: q\ndef execute_command(image):\n    return 1\n# Query: next"
    assert cut_at_stop(text, ("\n#", "\ndef ")) == ("\n# Query: q\ndef execute_command(image):\n    return 1", True)
    assert cut_at_stop("\ndef execute_command(image):", ("\ndef ",)) == ("\ndef execute_command(image):", False)


def test_a_stop_that_opens_the_first_code_line_counts():
    assert cut_at_stop("\ndef helper():\n    return 1", ("\ndef ",)) == ("", True)


def test_a_completion_without_code_is_never_cut():
    assert cut_at_stop("\n\n# only a comment\n", ("\n", "\n#")) == ("\n\n# only a comment\n", False)


def test_a_line_still_being_written_is_not_code_yet():
    """`de` may become the restated header: while decoding, the stop before it must wait."""
    assert body_start("# c\nde", final=False) is None and body_start("# c\nde") == 4
    assert not stopped("# c\nde", ("\ndef ",)) and not stopped("# c\ndef ", ("\ndef ",))
    assert not stopped("# c\ndef execute_command(image):\n", ("\ndef ",))
    assert stopped("# c\ndef execute_command(image):\n    return 1\n#", ("\n#",))


def test_no_stops_never_stop():
    assert not stopped("    return 1\n# Query", ()) and cut_at_stop("x\n#", ()) == ("x\n#", False)


#: lines a completion is made of: blank, comments, headers, code, and lines that open with a stop
LINES = ["", "# Query: q", "  # note", "def execute_command(image):", "    x = 1", "    return x```", "```", "class A:",
         "print(x)", "def helper():", "if __name__ == '__main__':", "deflate = 1"]


@given(st.lists(st.sampled_from(LINES), max_size=8).map("\n".join))
def test_stopping_while_decoding_gives_the_cut_of_the_finished_text(text):
    """The property that makes hf (stop as soon as the rule fires) and vLLM (decode to the
    end, then cut) agree: once `stopped` holds for a prefix, every extension is cut the same."""
    for end in range(len(text) + 1):
        if stopped(text[:end], STOPS):
            assert cut_at_stop(text[:end], STOPS) == cut_at_stop(text, STOPS)
            assert cut_at_stop(text, STOPS)[1]
            return


def test_eos_ids_join_the_tokenizer_and_the_generation_config():
    from types import SimpleNamespace

    assert eos_ids(SimpleNamespace(eos_token_id=3), SimpleNamespace(eos_token_id=[5, 7])) == {3, 5, 7}
    assert eos_ids(SimpleNamespace(eos_token_id=None)) == set()


def test_every_special_token_ends_a_program(tmp_path):
    """Qwen2.5-Coder writes `<|endoftext|>` or `<|file_sep|>` right after its return line;
    neither is in our converted folders' eos list, and a backend that went on past them glued
    the next file onto the program. Ordinary added tokens do not end it."""
    from types import SimpleNamespace

    from tokenizers import AddedToken, Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from viprog.policy.stops import eos_ids_of

    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1, "x": 2, "<|file_sep|>": 3, "word": 4}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="x")),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|file_sep|>"]})
    tok.add_tokens([AddedToken("word", special=False)])
    config = SimpleNamespace(eos_token_id=1)  # as in our converted folders
    assert eos_ids(tok, config) == {0, 1, 3}
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 1}')
    assert eos_ids_of(str(tmp_path), tok) == {0, 1, 3}
    assert eos_ids_of(str(tmp_path / "no-such-folder"), tok) == {0, 1, 3}
