"""The MSD / nnU-Net importer (boltzformer.data.importers.msd): NIfTI volumes sliced to a dataset folder, and the
``boltzformer import`` command run on one (it needs the MSD source built here)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from boltzformer.data.folder import FolderDataset
from boltzformer.data.importers import detect_kind, import_dataset
from boltzformer.io.images import DataError
from boltzformer.io.windows import WINDOWS
from tests.data.importers.importers_helpers import AFFINE, _display, _expected_counts, _make_msd, _mask, _meta


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

