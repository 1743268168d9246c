"""Test settings: offline, few threads, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Without a GPU, Triton's kernels run in its interpreter on CPU tensors (tests/kernels); it must be
# chosen before triton is first imported. Nothing else is sent to Triton unless a test asks
# (BOLTZFORMER_TRITON=interpret).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is not present")
    return SHARED_DATA


CLIP_BPE = SHARED_DATA.parent / "reference" / "clip" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="session", autouse=True)
def clip_tokenizer_folder(tmp_path_factory):
    """A CLIP tokenizer folder built offline from ../shared/reference/clip, made the default of every
    model with ``text.tokenizer = "clip"`` (the paper-size presets) through $BOLTZFORMER_CLIP_TOKENIZER.
    Without ../shared the variable stays unset: the tests that build those presets need ../shared for
    their reference files too and skip, saying so."""
    if not CLIP_BPE.is_file() or os.environ.get("BOLTZFORMER_CLIP_TOKENIZER"):
        yield os.environ.get("BOLTZFORMER_CLIP_TOKENIZER")
        return
    from boltzformer.model.clip_tokenizer import build_clip_tokenizer_folder

    folder = build_clip_tokenizer_folder(CLIP_BPE, tmp_path_factory.mktemp("clip-tokenizer"))
    os.environ["BOLTZFORMER_CLIP_TOKENIZER"] = str(folder)
    yield str(folder)
    del os.environ["BOLTZFORMER_CLIP_TOKENIZER"]


@pytest.fixture
def clip_tokenizer(clip_tokenizer_folder) -> str:
    if clip_tokenizer_folder is None:
        pytest.skip(f"CLIP's BPE file {CLIP_BPE} is not present (../shared/reference/clip)")
    return clip_tokenizer_folder
