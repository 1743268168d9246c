"""CLIP's BPE tokenizer: the offline folder builder, the ids against an independent reference
implementation of OpenAI's SimpleTokenizer, padding and truncation as the official code, and the
clear error when no tokenizer files can be found."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from boltzformer.model.clip_tokenizer import ClipTokenizer, load_clip_tokenizer
pytest.importorskip("transformers")
REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
CLIP_BPE = REFERENCE / "clip" / "bpe_simple_vocab_16e6.txt.gz"
GOLDEN = REFERENCE / "golden"


class _SimpleTokenizer:
    """OpenAI CLIP's ``simple_tokenizer.py`` BPE, written again here as an independent reference.

    Cleaning: whitespace runs -> one space, strip, lower-case. OpenAI's code also runs ``ftfy.fix_text``
    and ``html.unescape``; the HuggingFace tokenizer the official BoltzFormer / BiomedParse code calls
    does neither (it applies NFC instead), so the cases below hold no mojibake or HTML entities.
    """

    def __init__(self, bpe_gz) -> None:
        merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, map(chr, cs)))
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        import regex

        self.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)

    def bpe(self, token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str, context: int = 77) -> list[int]:
        import unicodedata

        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()
        ids = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return [49406] + ids[: context - 2] + [49407]


@pytest.fixture(scope="module")
def reference():
    if not CLIP_BPE.is_file():
        pytest.skip(f"CLIP's BPE file {CLIP_BPE} is not present (../shared/reference/clip)")
    return _SimpleTokenizer(CLIP_BPE)


CASES = [
    "lung nodule in CT scan",
    "Lung Nodule in CT Scan",  # case
    "LIVER   tumour,\tleft lobe;  (segment IV-a)!",  # whitespace runs, punctuation
    "3 nodules of 12.5 mm at T11/T12",  # digits: one id each
    "don't miss the patient's lesions we've seen",  # contractions
    "café naïve Ödem — 肺结节 ☃ 🫁",  # unicode: accents, CJK, symbols, emoji (byte-level)
    "kidney\u0301 cyst",  # a combining accent, NFC-composed first
]


def test_folder_builder_gives_clip_ids_the_golden_case_and_the_reference(clip_tokenizer, reference):
    tok = ClipTokenizer(path=clip_tokenizer)
    assert len(load_clip_tokenizer(clip_tokenizer)) == 49408 and (tok.BOS, tok.EOS, tok.PAD) == (49406, 49407, 49407)
    # ../shared/reference/clip/README.md and the golden inputs
    assert tok.encode("lung nodule in CT scan") == [49406, 16271, 578, 691, 579, 530, 1122, 11261, 49407]
    if (GOLDEN / "shared.npz").is_file():
        shared = np.load(GOLDEN / "shared.npz")
        ids, mask = tok([str(shared["prompt"])])
        assert ids.tolist() == shared["input_ids"].tolist() and mask.tolist() == shared["attention_mask"].tolist()
    for text in CASES:
        assert tok.encode(text) == reference.encode(text), text


def test_padding_truncation_and_empty_prompts_as_the_official_code(clip_tokenizer, reference):
    tok = ClipTokenizer(path=clip_tokenizer)
    ids, mask = tok(["nodule", "a " * 100 + "cyst", "?!", "   \t"])
    assert ids.shape == mask.shape == (4, 77) and ids.dtype == mask.dtype == torch.long
    # padding: the end id 49407 up to 77, attention mask 0 there
    n = len(reference.encode("nodule"))
    assert ids[0, n:].eq(49407).all() and mask[0].tolist() == [1] * n + [0] * (77 - n)
    # over-long: truncated to 75 words, the end token kept in place 76
    assert ids[1].tolist() == reference.encode("a " * 100 + "cyst") and ids[1, -1] == 49407 and mask[1].all()
    assert ids[1, -2] == reference.encode("a")[1]  # "cyst" was cut, not the end token
    # punctuation only: a word of its own; nothing left after cleaning: start and end tokens only
    assert ids[2, :4].tolist() == reference.encode("?!") + [49407] and len(reference.encode("?!")) == 3
    assert ids[3, :2].tolist() == [49406, 49407] and mask[3].sum() == 2


def test_missing_tokenizer_is_one_clear_error(tmp_path, monkeypatch, clip_tokenizer_folder):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if clip_tokenizer_folder:  # a folder recorded on another machine: the variable's folder is used instead
        assert len(load_clip_tokenizer(str(tmp_path / "gone"))) == 49408
    monkeypatch.delenv("BOLTZFORMER_CLIP_TOKENIZER", raising=False)
    with pytest.raises(ValueError, match=r"could not be loaded offline.*text.tokenizer_path=DIR.*build_clip_tokenizer_folder"):
        load_clip_tokenizer(str(tmp_path / "no-such-folder"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a tokenizer folder"):
        load_clip_tokenizer(str(tmp_path / "file"))
    from boltzformer.model.clip_tokenizer import build_clip_tokenizer_folder

    with pytest.raises(ValueError, match="bpe_gz: .* does not exist"):
        build_clip_tokenizer_folder(tmp_path / "none.txt.gz", tmp_path / "out")


def test_cli_without_a_tokenizer_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from boltzformer.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BOLTZFORMER_CLIP_TOKENIZER", raising=False)
    weights = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(1)}, weights)
    assert main(["convert", "--preset", "hiera-s", "--weights", str(weights), "--out", str(tmp_path / "o.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not be loaded offline" in err and "text.tokenizer_path=DIR" in err
    assert not (tmp_path / "o.ckpt").exists()
