"""Importers: BiomedParse-named PNGs, MSD / nnU-Net raw NIfTI volumes and folder validation, each built tiny in tmp_path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from boltzformer.data.folder import FolderDataset
from boltzformer.data.importers import biomedparse_prompt, detect_kind, import_dataset, modality_phrase
from boltzformer.io.images import DataError
from boltzformer.io.windows import WINDOWS


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def _mask(out: Path, pair: dict) -> np.ndarray:
    return np.asarray(Image.open(out / pair["mask"]))


# ------------------------------------------------------------------------------------------- BiomedParse
def _make_biomedparse(root: Path) -> dict[str, np.ndarray]:
    """train/ + train_mask/ and test/ + test_mask/; returns the expected bool mask of every mask file."""
    rng = np.random.default_rng(0)
    expected = {}

    def mask(name: str, box, *, encoding: str, split: str = "train", size=(24, 32)) -> None:
        m = np.zeros(size, bool)
        if box:
            m[box[0] : box[1], box[2] : box[3]] = True
        if encoding == "01":  # 0/1 grey: BiomedParse's rule is pixel != 0
            arr = m.astype(np.uint8)
        elif encoding == "rgba":  # RGBA, alpha 255 everywhere (as the BiomedParse demo masks)
            arr = np.zeros((*size, 4), np.uint8)
            arr[..., :3] = m[..., None] * 255
            arr[..., 3] = 255
        else:
            arr = m.astype(np.uint8) * 255
        _png(root / f"{split}_mask" / name, arr)
        expected[f"{split}/{name}"] = m

    _png(root / "train" / "0001_CT_abdomen.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    _png(root / "train" / "0002_MRI-FLAIR_brain.png", rng.integers(0, 255, (24, 32), dtype=np.uint8))
    _png(root / "train" / "0003_X-Ray_chest.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    _png(root / "train" / "0004_CT_lung.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))  # no mask
    _png(root / "test" / "0001_pathology_liver.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    mask("0001_CT_abdomen_liver.png", (2, 12, 3, 20), encoding="255")
    mask("0001_CT_abdomen_kidney+cyst.png", (15, 17, 25, 27), encoding="01")
    mask("0002_MRI-FLAIR_brain_lower-grade+glioma.png", (5, 9, 5, 8), encoding="rgba")
    mask("0003_X-Ray_chest_left+lung.png", None, encoding="255")  # empty: a negative
    mask("0001_pathology_liver_neoplastic+cells.png", (0, 3, 0, 3), encoding="255", split="test")
    return expected


def test_prompts_follow_the_biomedparse_demo_dataset(shared_data):
    meta = json.loads((shared_data / "biomedparse_demo" / "meta.json").read_text())
    checked = 0
    for p in meta["pairs"]:
        assert f"{p['target']} in {p['site']} {p['modality']}" == p["prompt_biomedparse_style"]
        if p["id"] == "01_CT_lung__nodule":  # the BoltzFormer README's own wording, noted in the meta
            continue
        assert biomedparse_prompt(p["target"], p["modality"], p["site"]) == p["prompt"], p["id"]
        checked += 1
    assert checked == len(meta["pairs"]) - 1
    assert modality_phrase("MRI-T2") == "T2 MRI" and modality_phrase("ADC") == "ADC MRI"
    assert modality_phrase("PET-CT") == "PET-CT"
    with pytest.raises(ValueError, match="target"):
        biomedparse_prompt(" ", "CT", "lung")


def test_biomedparse_import(tmp_path):
    src, out = tmp_path / "bp", tmp_path / "out"
    expected = _make_biomedparse(src)
    assert detect_kind(src) == "biomedparse"
    summary = import_dataset(src, out)
    assert summary.kind == "biomedparse" and summary.n_pairs == 5 and summary.n_negative == 1
    assert summary.n_images == 4 and summary.n_groups == 4  # 0004_CT_lung has no mask
    assert any("0004_CT_lung" in n for n in summary.notes)

    meta = _meta(out)
    by_source = {f"{p['source_split']}/{Path(p['source_mask']).name}": p for p in meta["pairs"]}
    assert set(by_source) == set(expected)
    for key, want in expected.items():
        got = _mask(out, by_source[key])
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got == 255, want, err_msg=key)
    prompts = {k: p["prompt"] for k, p in by_source.items()}
    assert prompts == {
        "train/0001_CT_abdomen_liver.png": "liver in abdomen CT",
        "train/0001_CT_abdomen_kidney+cyst.png": "kidney cyst in abdomen CT",
        "train/0002_MRI-FLAIR_brain_lower-grade+glioma.png": "lower-grade glioma in brain FLAIR MRI",
        "train/0003_X-Ray_chest_left+lung.png": "left lung in chest X-ray",
        "test/0001_pathology_liver_neoplastic+cells.png": "neoplastic cells in liver pathology image",
    }
    p = by_source["train/0001_CT_abdomen_kidney+cyst.png"]
    assert (p["modality"], p["site"], p["target"]) == ("CT", "abdomen", "kidney cyst")
    assert p["prompt_biomedparse_style"] == "kidney cyst in abdomen CT"
    assert by_source["train/0003_X-Ray_chest_left+lung.png"]["negative"] is True
    assert "negative" not in p
    # images are copied byte for byte; the two splits' "0001" images do not collide
    liver = by_source["train/0001_CT_abdomen_liver.png"]
    assert (out / liver["image"]).read_bytes() == (src / "train" / "0001_CT_abdomen.png").read_bytes()
    assert liver["image"] != by_source["test/0001_pathology_liver_neoplastic+cells.png"]["image"]

    ds = FolderDataset(out)
    assert len(ds) == 5 and len(ds.groups) == 4  # masks of one image share its group
    sample = ds[ds.ids.index(by_source["train/0003_X-Ray_chest_left+lung.png"]["id"])]
    assert sample["mask"].sum() == 0 and sample["area_fraction"] == 0.0
    assert not list(tmp_path.glob("out.tmp-*"))


def test_biomedparse_errors_name_the_file(tmp_path):
    src = tmp_path / "bp"
    _make_biomedparse(src)
    orphan = _png(src / "train_mask" / "0009_CT_lung_nodule.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(DataError, match=r"0009_CT_lung_nodule\.png has no image .*0009_CT_lung\.png"):
        import_dataset(src, tmp_path / "out")
    orphan.unlink()
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))

    _png(src / "train" / "0005_CT.png", np.zeros((24, 32), np.uint8))
    bad = _png(src / "train_mask" / "0005_CT_nodule.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(DataError, match=r"0005_CT\.png.*\[IMAGE-NAME\]_\[MODALITY\]_\[SITE\]"):
        import_dataset(src, tmp_path / "out")
    bad.unlink()

    _png(src / "train_mask" / "0001_CT_abdomen_spleen.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"0001_CT_abdomen_spleen\.png is 10x10 but its image .* is 24x32"):
        import_dataset(src, tmp_path / "out")


# ------------------------------------------------------------------------------------------- MSD / nnU-Net
SHAPE = (32, 32, 8)  # (X, Y, Z) voxels; Z is axial
AFFINE = np.diag([0.8, 0.7, 2.5, 1.0])  # RAS+ already


def _display(volume_xyz: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z as shown: rows anterior -> posterior, columns patient right -> left."""
    return volume_xyz[:, :, z].T[::-1, ::-1]


def _make_msd(root: Path, *, v2: bool = False, channels: int = 1) -> dict[str, np.ndarray]:
    """3 cases of 32x32x8, labels 1 (a box in slices 1-5 or 2-5) and 2 (slices 3-4; absent from case 2)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    labels = {}
    for c in range(3):
        case = f"liver_{c}"
        image = rng.normal(40, 80, SHAPE + ((channels,) if channels > 1 else ())).astype(np.float32)
        lab = np.zeros(SHAPE, np.uint8)
        lab[4:14, 6:20, 1 + c % 2 : 6] = 1
        if c < 2:
            lab[20:23, 8:12, 3:5] = 2
        if v2:
            for ch in range(channels):
                data = image[..., ch] if channels > 1 else image
                nib.save(nib.Nifti1Image(data, AFFINE), root / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
        else:
            nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
        labels[case] = lab
    (root / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"AppleDouble")  # as in the MSD archives
    if v2:
        meta = {"channel_names": {"0": "CT", "1": "MRI"}, "labels": {"background": 0, "liver": 1, "tumor": 2, "any": [1, 2], "ignore": 3},
                "file_ending": ".nii.gz", "name": "Dataset003_Liver"}
    else:
        meta = {"name": "Liver", "description": "Liver and tumour segmentation", "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "liver", "2": "cancer"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return labels


def _expected_counts(labels: dict[str, np.ndarray], values: tuple[int, ...], ratio: float = 0.25) -> tuple[int, int]:
    pos = neg = 0
    for lab in labels.values():
        n = int(np.isin(lab, values).any(axis=(0, 1)).sum())
        pos += n
        neg += min(SHAPE[2] - n, math.floor(ratio * n + 0.5))
    return pos, neg


def test_msd_import_slices_labels_and_negatives(tmp_path):
    src, out = tmp_path / "Task03_Liver", tmp_path / "out"
    labels = _make_msd(src)
    images = {case: nib.load(src / "imagesTr" / f"{case}.nii.gz").get_fdata() for case in labels}
    assert detect_kind(src) == "msd"
    summary = import_dataset(src, out, label_names={"cancer": "liver tumor"}, seed=0)
    pairs = _meta(out)["pairs"]

    for name, values, prompt in (("liver", (1,), "liver in abdomen CT"), ("cancer", (2,), "liver tumor in abdomen CT")):
        mine = [p for p in pairs if p["label"] == name]
        pos, neg = _expected_counts(labels, values)
        assert sum(1 for p in mine if not p.get("negative")) == pos and sum(1 for p in mine if p.get("negative")) == neg
        assert {p["prompt"] for p in mine} == {prompt}
    assert summary.n_pairs == len(pairs) and summary.n_negative == sum(1 for p in pairs if p.get("negative"))
    assert summary.n_groups == 3 and summary.prompts["liver tumor in abdomen CT"] == 4 + 2

    for p in pairs:
        lab = labels[p["patient"]]
        want = _display(np.isin(lab, p["label_values"]), p["slice"])
        got = _mask(out, p) == 255
        np.testing.assert_array_equal(got, want, err_msg=p["id"])
        assert p["negative"] is True if not want.any() else "negative" not in p
        assert p["mask_pixels"] == int(want.sum()) and p["area_fraction"] == pytest.approx(want.mean())
        assert (p["modality"], p["site"], p["target"]) == ("CT", "abdomen", "liver tumor" if p["label"] == "cancer" else "liver")
    # every voxel of every label is in exactly one positive mask (slice_step 1)
    for case, lab in labels.items():
        for name, v in (("liver", 1), ("cancer", 2)):
            total = sum(p["mask_pixels"] for p in pairs if p["patient"] == case and p["label"] == name)
            assert total == int((lab == v).sum())
    # one image per used slice, shared by the labels of that slice; CT windowed to 8-bit grey
    by_slice = {(p["patient"], p["slice"]): p["image"] for p in pairs}
    assert len(set(by_slice.values())) == len(by_slice) == _meta(out)["num_images"]
    # CT: the liver window (the labels name the liver), the same HU -> grey map for every slice
    assert _meta(out)["import"]["window"] == "liver"
    center, width = WINDOWS["liver"]
    for p in pairs[:6]:
        hu = _display(images[p["patient"]], p["slice"])
        want = np.rint(np.clip((hu - (center - width / 2)) / width * 255, 0, 255))
        got = np.asarray(Image.open(out / p["image"]))
        assert got.dtype == np.uint8 and got.shape == (32, 32)
        assert np.abs(got.astype(int) - want).max() <= 1  # float32 rounding at exact halves

    # the folder loads, and no case lands in two splits
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        ds = FolderDataset(out, split=split, val_fraction=0.3, test_fraction=0.3, seed=1)
        for group in ds.groups:
            assert seen.setdefault(group, split) == split
        assert ds[0]["image"].shape == (3, 32, 32)
    assert sorted(seen) == sorted(labels)


def test_msd_negatives_are_seeded_and_slice_step(tmp_path):
    src = tmp_path / "msd"
    labels = _make_msd(src)

    def negatives(seed: int, step: int = 1) -> list[str]:
        out = tmp_path / f"out_{seed}_{step}"
        import_dataset(src, out, seed=seed, slice_step=step, overwrite=True)
        return sorted(p["id"] for p in _meta(out)["pairs"] if p.get("negative"))

    assert negatives(0) == negatives(0)
    assert len({tuple(negatives(s)) for s in range(6)}) > 1  # another seed draws other slices
    for p in _meta(tmp_path / "out_0_1")["pairs"]:  # negatives: slices of the case without the label
        assert np.isin(labels[p["patient"]][..., p["slice"]], p["label_values"]).any() != bool(p.get("negative"))

    import_dataset(src, tmp_path / "step2", slice_step=2, negative_ratio=0.0)
    pairs = _meta(tmp_path / "step2")["pairs"]
    assert not any(p.get("negative") for p in pairs)
    liver0 = sorted(p["slice"] for p in pairs if p["patient"] == "liver_0" and p["label"] == "liver")
    assert liver0 == [1, 3, 5]  # of slices 1-5


def test_nnunet_v2_layout_regions_and_channels(tmp_path):
    src = tmp_path / "Dataset003_Liver"
    labels = _make_msd(src, v2=True, channels=2)
    out = tmp_path / "out"
    summary = import_dataset(src, out, site="liver", negative_ratio=0)
    pairs = _meta(out)["pairs"]
    assert {p["prompt"] for p in pairs} == {"liver in CT", "tumor in liver CT", "any in liver CT"}
    assert summary.notes == []  # the site was given
    region = [p for p in pairs if p["label"] == "any"]
    assert sum(p["mask_pixels"] for p in region) == sum(int((lab > 0).sum()) for lab in labels.values())

    out1 = tmp_path / "out1"
    import_dataset(src, out1, channel=1, negative_ratio=0)  # the MRI channel: modality from channel_names
    pairs1 = _meta(out1)["pairs"]
    assert {p["modality"] for p in pairs1} == {"MRI"} and pairs1[0]["prompt"] == "liver in abdomen MRI"
    first = pairs[0]["image"]
    assert not np.array_equal(np.asarray(Image.open(out / first)), np.asarray(Image.open(out1 / first)))
    mr = np.stack([np.asarray(Image.open(out1 / p["image"])) for p in pairs1 if p["patient"] == "liver_0"])
    assert mr.min() == 0 and mr.max() == 255  # MR: stretched between the case's percentiles, no window
    assert _meta(out1)["import"]["window"] is None
    import_dataset(src, tmp_path / "out2", channel=1, window=(100, 50), negative_ratio=0)  # windowed although MRI
    assert _meta(tmp_path / "out2")["import"]["window"] == [100, 50]
    with pytest.raises(ValueError, match="did you mean 'liver'"):
        import_dataset(src, tmp_path / "out3", window="livr")


def test_msd_v1_four_dimensional_volumes(tmp_path):
    src = tmp_path / "Task01_BrainTumour"
    _make_msd(src, channels=2)
    meta = json.loads((src / "dataset.json").read_text())
    meta.update(name="BRATS", modality={"0": "FLAIR", "1": "T1w"})
    (src / "dataset.json").write_text(json.dumps(meta))
    import_dataset(src, tmp_path / "a", channel=1)
    assert _meta(tmp_path / "a")["pairs"][0]["prompt"] == "liver in brain T1 MRI"
    with pytest.raises(DataError, match=r"has 2 channel\(s\), channel 2"):
        import_dataset(src, tmp_path / "b", channel=2, modality="T2")
    single = tmp_path / "Task03_Liver"
    _make_msd(single)
    meta = json.loads((single / "dataset.json").read_text())
    meta["modality"] = {"0": "CT", "1": "PET"}
    (single / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"imagesTr/liver_0\.nii\.gz has 1 channel\(s\), channel 1"):
        import_dataset(single, tmp_path / "c", channel=1)


def test_msd_errors_name_the_file(tmp_path):
    src = tmp_path / "msd"
    _make_msd(src)
    (src / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"msd/dataset\.json not found"):
        import_dataset(src, tmp_path / "out")

    src = tmp_path / "msd2"
    _make_msd(src)
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 7), np.uint8), AFFINE), src / "labelsTr" / "liver_1.nii.gz")
    with pytest.raises(DataError, match=r"labelsTr/liver_1\.nii\.gz has shape \(32, 32, 7\).* but its image .*imagesTr/liver_1\.nii\.gz"):
        import_dataset(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))  # nothing half-written

    src = tmp_path / "msd3"
    _make_msd(src)
    (src / "imagesTr" / "liver_2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"label .*labelsTr/liver_2\.nii\.gz has no image"):
        import_dataset(src, tmp_path / "out")
    with pytest.raises(ValueError, match="renames"):
        import_dataset(tmp_path / "msd2", tmp_path / "out", label_names={"tumour": "x"})


# ------------------------------------------------------------------------------------------- folder, detection, out
def test_unknown_layout_and_arguments(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"stuff: unknown dataset layout.*notes\.txt"):
        import_dataset(tmp_path / "stuff", tmp_path / "out")
    with pytest.raises(DataError, match="is not a folder"):
        import_dataset(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="kind must be one of"):
        import_dataset(tmp_path / "stuff", tmp_path / "out", kind="nnunet")
    src = tmp_path / "bp"
    _make_biomedparse(src)
    with pytest.raises(ValueError, match="output folder"):
        import_dataset(src)
    with pytest.raises(ValueError, match="inside the source"):
        import_dataset(src, src / "imported")


def test_out_is_never_overwritten_unless_asked(tmp_path):
    src, out = tmp_path / "bp", tmp_path / "out"
    _make_biomedparse(src)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        import_dataset(src, out)
    assert (out / "keep.txt").read_text() == "mine"
    import_dataset(src, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bp", "out"]  # no temporary folder left


def test_folder_validation_copy_and_link(tmp_path):
    src = tmp_path / "ds"
    _make_biomedparse(tmp_path / "bp")
    import_dataset(tmp_path / "bp", src)
    assert detect_kind(src) == "folder"
    summary = import_dataset(src)  # validate in place
    assert summary.out is None and summary.n_pairs == 5 and summary.n_negative == 1
    copied = import_dataset(src, tmp_path / "copy")
    assert FolderDataset(tmp_path / "copy").ids == FolderDataset(src).ids and copied.out == str(tmp_path / "copy")
    import_dataset(src, tmp_path / "linked", link=True)
    some = next((tmp_path / "linked" / "images").iterdir())
    assert some.is_symlink() and len(FolderDataset(tmp_path / "linked")) == 5


def test_folder_validation_lists_every_problem(tmp_path):
    src = tmp_path / "ds"
    _make_biomedparse(tmp_path / "bp")
    import_dataset(tmp_path / "bp", src)
    meta = _meta(src)
    pairs = meta["pairs"]
    _png(src / pairs[0]["mask"], (np.asarray(Image.open(src / pairs[0]["mask"])) > 0).astype(np.uint8))  # 0/1
    _png(src / pairs[1]["mask"], np.zeros((5, 5), np.uint8))  # wrong size
    (src / pairs[4]["image"]).write_bytes(b"not a png")
    neg = next(p for p in pairs if p.get("negative"))
    neg["negative"], pairs[2]["negative"] = False, True  # pairs[2] has pixels
    (src / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as err:
        import_dataset(src)
    text = str(err.value)
    assert "4 problem(s)" in text
    assert f"{pairs[0]['mask']} (pair {pairs[0]['id']!r}) has grey values [1]" in text and "reads as empty" in text
    assert f"{pairs[1]['mask']} is 5x5 but its image" in text
    assert pairs[4]["image"].split("/")[-1] in text and "could not be read" in text
    assert f"{pairs[2]['mask']} (pair {pairs[2]['id']!r}) is marked negative" in text


def test_shared_folder_datasets_validate(shared_data):
    summary = import_dataset(shared_data / "kvasir_small_polyp")
    meta = json.loads((shared_data / "kvasir_small_polyp" / "meta.json").read_text())
    assert summary.kind == "folder" and summary.n_pairs == len(meta["pairs"]) and summary.n_negative == 0


@pytest.mark.slow
def test_cli_import_then_train(tmp_path, capsys):
    from boltzformer.cli import main

    src, out, run = tmp_path / "Task03_Liver", tmp_path / "liver", tmp_path / "run"
    _make_msd(src)
    assert main(["import", str(src), "--out", str(out), "--rename", "cancer=liver tumor", "--negative-ratio", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "liver tumor in abdomen CT" in printed and "negatives" in printed
    assert main(["import", str(out)]) == 0  # validate the result in place
    micro = ["--max-steps", "2", "--batch-size", "2", "--val-every", "2", "--val-batches", "1", "--image-size", "64",
             "--set", "num_layers=3", "--set", "num_queries=4", "--quiet"]
    assert main(["train", "--data", str(out), "--out", str(run), *micro]) == 0
    assert (run / "last.ckpt").is_file()

    assert main(["import", str(src), "--out", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    (src / "dataset.json").unlink()
    assert main(["import", str(src), "--out", str(tmp_path / "x")]) == 2
    assert "dataset.json not found" in capsys.readouterr().err
    assert main(["import", str(src), "--out", str(tmp_path / "x"), "--rename", "cancer"]) == 2
    assert "LABEL=NAME" in capsys.readouterr().err
    assert main(["import", str(src), "--out", str(tmp_path / "x"), "--window", "40,x"]) == 2
    assert "(center, width) in HU" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_imported_folder_says_what_made_it_and_a_rerun_redoes_only_a_different_import(tmp_path):
    import stat

    src, out = tmp_path / "bp", tmp_path / "out"
    _make_biomedparse(src)
    import_dataset(src, out)
    made = _meta(out)["made_by"]
    assert made["source"] == str(src.resolve()) and made["kind"] == "biomedparse" and made["options"] == {"link": False}
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700
    again = import_dataset(src, out)
    assert any("nothing redone" in n for n in again.notes) and again.n_pairs == 5
    with pytest.raises(FileExistsError, match="imported with other options"):
        import_dataset(src, out, link=True)
    (src / "extra.txt").write_text("a new file in the source")
    with pytest.raises(FileExistsError, match="source_listing_sha256"):
        import_dataset(src, out)


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
