"""boltzformer.provenance: what made_by records, what differences names, and file hashes."""

from __future__ import annotations

import hashlib
import os

import boltzformer
from boltzformer.provenance import differences, file_sha256, made_by, tree_fingerprint


def test_file_sha256_of_a_known_file_and_a_changed_one(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256("abc")
    path.write_bytes(b"abcd")  # another size: hashed again, not taken from the cache
    assert file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()
    assert file_sha256(str(path)) == file_sha256(tmp_path / "." / "f.bin")


def test_tree_fingerprint_changes_with_any_file(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"1")
    (tmp_path / "b.dcm").write_bytes(b"2")
    first = tree_fingerprint(tmp_path)
    assert len(first) == 64 and tree_fingerprint(tmp_path / "a.dcm") == file_sha256(tmp_path / "a.dcm")
    (tmp_path / ".hidden").write_bytes(b"ignored")
    assert tree_fingerprint(tmp_path) == first
    (tmp_path / "b.dcm").write_bytes(b"3")
    os.utime(tmp_path / "b.dcm", ns=(1, 1))
    assert tree_fingerprint(tmp_path) != first


def test_made_by_contents_are_json_values(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"weights")
    made = made_by(ckpt, {"image_size": 64}, {"threshold": 0.5, "size": (64, 64)})
    assert set(made) == {"checkpoint", "model_config", "settings", "version", "commit"}
    assert made["checkpoint"] == {"path": str(ckpt), "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert made["model_config"] == {"image_size": 64}
    assert made["settings"] == {"threshold": 0.5, "size": [64, 64]}  # a tuple reads back as a list
    assert made["version"] == boltzformer.__version__
    assert made["commit"] is None or len(made["commit"].removesuffix("-dirty")) == 40
    assert made_by(None, None, {})["checkpoint"] is None


def test_differences_name_what_changed(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"weights")
    old = made_by(ckpt, {"image_size": 64}, {"threshold": 0.5, "seed": 0})
    assert differences(old, old) == []
    assert differences(None, old) == ["no provenance"]
    moved = dict(old, checkpoint={"path": "elsewhere.ckpt", "sha256": old["checkpoint"]["sha256"]})
    assert differences(old, moved) == []  # the same weights at another path
    new = dict(old, checkpoint={"path": str(ckpt), "sha256": "0" * 64}, model_config={"image_size": 128},
               settings={"threshold": 0.3, "samples": 3}, version="9.9")
    assert differences(old, new) == ["checkpoint", "model config", "samples None -> 3", "seed 0 -> None",
                                     "threshold 0.5 -> 0.3", f"version {old['version']} -> 9.9"]
