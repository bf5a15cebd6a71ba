"""Offline tokenizers for PI0: a small local one for tiny models, PaliGemma's from disk for real ones.

PI0's prompt tokenizer is PaliGemma's (a 257k SentencePiece vocabulary) and lives on a
model hub that this project never contacts at run time. Tiny models (tests, demos) use
`build_libero_tokenizer()`: a word-level vocabulary built with the `tokenizers` library
from LIBERO-style instructions plus PaliGemma's special tokens, wrapped as a
`transformers.PreTrainedTokenizerFast` so that lerobot's
`TokenizerProcessorStep(tokenizer=...)` and `tokenizer(texts, padding="max_length", ...)`
behave exactly as with the real tokenizer (a <bos> first, right padding with <pad>=0).
Real checkpoints load PaliGemma's tokenizer from a local directory (`load_tokenizer(path)`).
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# PaliGemma's special tokens, at PaliGemma's ids (pad 0, eos 1, bos 2, unk 3).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]

# Words of the LIBERO instructions (all five suites) plus a margin of common robot words;
# words outside it map to <unk>, which is harmless for a tiny model.
_LIBERO_WORDS = """
a an the and of on in into to at from with top bottom front back left right middle
center side both it its
pick up put place push open close turn on off stack move grab lift
alphabet soup cream cheese tomato sauce ketchup orange juice milk butter chocolate pudding
bbq salad dressing basket tray plate bowl black white wooden cabinet drawer stove
microwave wine bottle rack shelf mug cup caddy book frying pan moka pot pots yellow
red green blue porcelain flat short long chef ramekin cookie box cookies next between
table kitchen living room study scene libero object objects region caddy's compartment
""".split()


def libero_vocabulary(extra_texts: list[str] | None = None) -> list[str]:
    """Special tokens first (PaliGemma ids), then words from LIBERO and `extra_texts`, sorted."""
    words = set(_LIBERO_WORDS)
    for text in extra_texts or []:
        words.update(_split_words(text))
    return SPECIAL_TOKENS + ["\n"] + sorted(words - set(SPECIAL_TOKENS) - {"\n"})


def _split_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def build_libero_tokenizer(extra_texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for LIBERO instructions that needs no download.

    Lower-cases, splits on whitespace and punctuation, keeps "\\n" as its own token
    (lerobot's PI0 processor appends one to every prompt) and prepends <bos> like
    PaliGemma's tokenizer. Vocabulary size is about 200, so tiny models can use a small
    embedding table (see `algos/tiny_pi0.py`).
    """
    vocab = {token: i for i, token in enumerate(libero_vocabulary(extra_texts))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Keep "\n" as a token: split on it (isolated) before whitespace/punctuation splitting.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"),
            pre_tokenizers.Punctuation(behavior="removed"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
    )


def load_tokenizer(path: str | Path | None) -> PreTrainedTokenizerBase:
    """Tokenizer from a local directory (e.g. PaliGemma's, saved with `save_pretrained`).

    `None` builds the offline LIBERO tokenizer (only right for tiny models whose embedding
    table was sized for it). Never downloads: a missing directory is an error.
    """
    if path is None:
        return build_libero_tokenizer()
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {path} does not exist: pass a local copy of the PaliGemma tokenizer "
            "(tokenizer.json / tokenizer.model saved with save_pretrained), no hub downloads happen here"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
