"""CLIP's BPE tokenizer, as the text weights of the paper-size presets and BiomedParse v2 expect it.

The official BoltzFormer and BiomedParse text encoders were trained on the ids of HuggingFace's
CLIP tokenizer loaded from an OpenAI CLIP hub id (microsoft/BoltzFormer
``configs/sem_seg_head/predictor/language_encoder/language_encoder.yaml``:
``AutoTokenizer.from_pretrained("openai/clip-vit-base-patch32")``, ``max_token_num: 77``) and called with
``padding="max_length", truncation=True, max_length=77`` (``language_encoder.py``,
``get_text_token_embeddings``). :class:`ClipTokenizer` wraps that same tokenizer (``CLIPTokenizerFast``)
and calls it the same way: start id 49406, end id 49407, padding with 49407 up to 77 tokens,
attention mask 0 on the padding (which the model never attends), truncation that keeps the end token.

Where the tokenizer files come from (:func:`load_clip_tokenizer`), the first that loads of:
``text.tokenizer_path`` (a local folder or a hub id), ``$BOLTZFORMER_CLIP_TOKENIZER``, the hub id above. Local files
and the HuggingFace cache are tried first; the network only when ``HF_HUB_OFFLINE`` is not set.
Without internet, :func:`build_clip_tokenizer_folder` makes the folder from CLIP's
``bpe_simple_vocab_16e6.txt.gz`` (shipped with OpenAI's ``clip`` and ``open-clip-torch``).

transformers is imported only here, when a CLIP tokenizer is asked for.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["CLIP_HUB_ID", "CLIP_ENV_VAR", "ClipTokenizer", "build_clip_tokenizer_folder", "load_clip_tokenizer"]

CLIP_HUB_ID = "openai/clip-vit-base-patch32"
CLIP_ENV_VAR = "BOLTZFORMER_CLIP_TOKENIZER"
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
_N_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer reads exactly these merge lines


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable character table (CLIP ``simple_tokenizer.py``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_tokenizer_folder(bpe_gz: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a HuggingFace CLIP tokenizer folder from CLIP's ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary is built as OpenAI's ``SimpleTokenizer`` builds it: the 256 byte characters, the
    same with ``</w>``, one entry per merge (the first 48,894 merge lines), then ``<|startoftext|>`` and
    ``<|endoftext|>``: 49,408 entries, ids equal to the hub tokenizer's. Writes ``vocab.json``,
    ``merges.txt`` and the ``save_pretrained`` files (``tokenizer.json``, ``tokenizer_config.json``).

    Raises:
        ValueError: ``bpe_gz`` is missing or is not a CLIP merge list.
    """
    bpe_gz, out = Path(bpe_gz), Path(out)
    if not bpe_gz.is_file():
        raise ValueError(f"bpe_gz: {bpe_gz} does not exist; expected CLIP's bpe_simple_vocab_16e6.txt.gz")
    try:
        lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"bpe_gz: {bpe_gz} is not a gzipped UTF-8 merge list ({exc})") from None
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"bpe_gz: {bpe_gz} holds {len(merges)} merge lines, expected {_N_MERGES} pairs (CLIP's BPE)")
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    ids = {v: i for i, v in enumerate(vocab)}
    if len(ids) != VOCAB_SIZE:  # repeated merges: not CLIP's list
        raise ValueError(f"bpe_gz: {bpe_gz} gives {len(ids)} distinct tokens, expected {VOCAB_SIZE} (CLIP's BPE)")
    from transformers import CLIPTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    # the two files, positionally: transformers 5 names them vocab / merges, 4.x vocab_file / merges_file
    tok = CLIPTokenizerFast(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=CONTEXT_LENGTH)
    tok.save_pretrained(str(out))
    return out


def load_clip_tokenizer(path: str | None = None):
    """The ``CLIPTokenizerFast`` from the first source that loads: ``path`` (folder or hub id), then
    ``$BOLTZFORMER_CLIP_TOKENIZER``, then the OpenAI hub id; local files first. Cached per sources, so
    a checkpoint that recorded a folder of another machine still loads where the variable is set.

    Raises:
        ValueError: no tokenizer could be loaded (the message says the three ways to get one), ``path``
            is a file, or a source holds another tokenizer than CLIP's.
    """
    sources = [path, os.environ.get(CLIP_ENV_VAR), CLIP_HUB_ID]
    return _load(tuple(dict.fromkeys(s for s in sources if s)))


@functools.lru_cache(maxsize=4)
def _load(sources: tuple[str, ...]):
    try:
        from transformers import CLIPTokenizerFast
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("the CLIP tokenizer needs transformers: pip install 'boltzformer[hf]'") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    reasons = []
    for source in sources:
        local = Path(source).expanduser()
        if local.exists() and not local.is_dir():
            raise ValueError(f"text.tokenizer_path {source!r} is a file; expected a tokenizer folder or a hub id")
        if not local.exists() and (source.startswith((".", "~", os.sep)) or source.count("/") > 1):
            reasons.append(f"{source!r}: no such folder")
            continue
        for local_only in [True] if local.is_dir() or offline else [True, False]:
            try:
                tok = CLIPTokenizerFast.from_pretrained(str(local) if local.is_dir() else source, local_files_only=local_only)
            except (OSError, ValueError) as exc:
                reasons.append(f"{source!r}: {str(exc).splitlines()[0][:120]}")
                continue
            if len(tok) <= 3:  # transformers 5 builds an empty tokenizer (its 3 special tokens) when no file is found
                reasons.append(f"{source!r}: no tokenizer files")
                continue
            if len(tok) != VOCAB_SIZE or tok.bos_token_id != 49406 or tok.eos_token_id != 49407:
                raise ValueError(f"text.tokenizer_path {source!r}: not CLIP's BPE tokenizer ({len(tok)} tokens, start id "
                                 f"{tok.bos_token_id}, end id {tok.eos_token_id}; expected 49408, 49406, 49407)")
            return tok
    raise ValueError(
        f"the CLIP tokenizer could not be loaded offline (tried {'; '.join(reasons)}). Get it one of three ways: "
        f"with internet, unset HF_HUB_OFFLINE to download {CLIP_HUB_ID!r}; or point --set text.tokenizer_path=DIR (or "
        f"${CLIP_ENV_VAR}) at a folder saved with CLIPTokenizerFast.save_pretrained; or build that folder from "
        f"CLIP's bpe_simple_vocab_16e6.txt.gz with boltzformer.model.clip_tokenizer.build_clip_tokenizer_folder"
    )


class ClipTokenizer:
    """CLIP BPE ids as the official code makes them: ``(input_ids, attention_mask)``, int64 (B, 77).

    Args:
        path: tokenizer folder or hub id (None: ``$BOLTZFORMER_CLIP_TOKENIZER``, else the OpenAI hub id).
        context_length: tokens per prompt, start and end included (77 as CLIP).
    """

    name = "clip"
    PAD = BOS = EOS = None  # set from the loaded tokenizer

    def __init__(self, *, path: str | None = None, context_length: int = CONTEXT_LENGTH) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        self._tok = load_clip_tokenizer(path)
        self.context_length = context_length
        self.vocab_size = len(self._tok)
        self.PAD, self.BOS, self.EOS = self._tok.pad_token_id, self._tok.bos_token_id, self._tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        """The ids of one prompt, start and end tokens included, without padding."""
        return self._tok(text, truncation=True, max_length=self.context_length)["input_ids"]

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        enc = self._tok(list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()
