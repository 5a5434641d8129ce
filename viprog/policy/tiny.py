"""A tiny, randomly initialised Qwen2 with a tokenizer trained on the spot, saved as a folder.

Why: tests and benchmarks must exercise the real loading and sampling code (a hub name
or a local folder through `AutoModelForCausalLM`) without downloading anything. The
folder this writes loads exactly like a real checkpoint; its tokenizer is a byte-level
BPE trained on program-like text, with a chat template, so every prompt style works.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CORPUS = [
    "def execute_command(image):\n    image_patch = ImagePatch(image)\n    return image_patch.simple_query(query)\n",
    "# Query: How many red circles are there?\n    circle_patches = image_patch.find('red circle')\n",
    "    return bool_to_yesno(image_patch.exists('blue square'))\n    return len(patches)\n",
    "class ImagePatch:\n    def find(self, object_name: str) -> list[ImagePatch]:\n        \"\"\"Returns patches.\"\"\"\n",
    "    if left_patch.horizontal_center < right_patch.horizontal_center:\n        return 'left'\n    else:\n",
    "Is the large green triangle to the left of the small yellow square? What color is the shape?\n",
]


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512, hidden_size: int = 64,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """Write a random Qwen2 causal LM and its tokenizer to `out_dir`; returns the folder."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, "<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # a wider logit spread than the default init: fewer near-ties in greedy tests
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out)
    return out
