"""boltzformer ablate: grid expansion, the resume rules, and a tiny cell that a rerun reproduces."""

from __future__ import annotations

import json

import pytest

from boltzformer.cli import main
from boltzformer.train import ablate
from boltzformer.train.ablate import cell_status, expand_grid, resolve_cell, run_grid

GRID = {
    "seeds": [0, 1],
    "base": {"settings": {"image_size": 64, "attention": "boltzmann"}, "train": {"max_steps": 20}},
    "axes": {
        "attention": {"settings.attention": ["boltzmann", "full", "masked"]},
        "peer": {"model": ["monai-unet"]},
        "steps": {"train.max_steps": [10]},
    },
}

# a cell of a few steps on 64 x 64 images: seconds on a CPU
TINY = {
    "seeds": [3],
    "base": {"settings": {"image_size": 64, "num_layers": 3, "num_queries": 4},
             "peer": {"channels": [4, 8]},
             "train": {"max_steps": 3, "batch_size": 2, "val_every": 3, "accelerator": "cpu"},
             "synthetic": {"n_train": 8, "n_val": 2, "n_test": 6}, "eval": {"batch_size": 3}},
    "axes": {"peer": {"model": ["monai-unet"]}},
}


def test_grid_expansion_settings_times_seeds_in_order():
    cells = expand_grid(GRID)
    # the base value of an axis is the default setting, not a cell of its own
    settings = ["default", "attention=full", "attention=masked", "peer=monai-unet", "steps=10"]
    assert [c.setting for c in cells] == [s for s in settings for _ in (0, 1)]
    assert [c.seed for c in cells] == [0, 1] * len(settings)
    by = {c.name: c for c in cells}
    assert set(by) == {f"{s}__seed{k}" for s in settings for k in (0, 1)}
    assert by["attention=full__seed1"].spec["settings"] == {"image_size": 64, "attention": "full"}
    assert by["steps=10__seed0"].spec["train"] == {"max_steps": 10}
    assert by["default__seed0"].spec["model"] == "boltzformer" and by["peer=monai-unet__seed0"].spec["model"] == "monai-unet"
    cfg = resolve_cell(by["attention=masked__seed1"])
    assert cfg["model_config"]["decoder"]["attention"] == "masked" and cfg["train_config"]["seed"] == 1
    assert cfg["train_config"]["max_steps"] == 20 and cfg["eval"]["seed"] == 1 and cfg["peer_config"] is None
    assert resolve_cell(by["peer=monai-unet__seed0"])["peer_config"]["network"] == "unet"
    # --seeds and --model replace the grid's
    assert {c.seed for c in expand_grid(GRID, seeds=[5])} == {5}
    assert {c.spec["model"] for c in expand_grid(GRID, model="monai-unet")} == {"monai-unet"}


@pytest.mark.parametrize("grid, match", [
    ({"base": {"modle": "x"}}, "unknown base key"),
    ({"axes": {"a": {"nothing.x": [1]}}}, "must start with"),
    ({"axes": {"a": {"train.lr": []}}}, "non-empty list"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"axis": {}}, "top-level"),
])
def test_bad_grids_are_refused(grid, match):
    with pytest.raises(ValueError, match=match):
        expand_grid(grid)


def test_bad_cell_settings_name_the_cell():
    [_, cell] = expand_grid({"axes": {"tau": {"settings.base_temperature": [-1.0]}}})
    with pytest.raises(ValueError, match="tau=-1.0.*base_temperature"):
        resolve_cell(cell)


def _fake_record(cell, config, complete=True):
    return {"format": ablate.FORMAT, "complete": complete, "setting": cell.setting, "seed": cell.seed, "config": config,
            "summary": {"dice": 0.5, "dice_by_size": {"tiny": 0.5}}, "wall_seconds": {"total": 1.0},
            "images": [{"id": "a", "bucket": "tiny", "dice": 0.5}]}


def test_resume_skips_finished_cells_and_redoes_damaged_ones(tmp_path, monkeypatch):
    cells = expand_grid(GRID, seeds=[0])
    configs = {c.name: resolve_cell(c) for c in cells}
    folder = tmp_path / "cells"
    folder.mkdir()
    write = lambda c, data: (folder / f"{c.name}.json").write_text(json.dumps(data) if not isinstance(data, str) else data)  # noqa: E731
    default, full, masked, peer, steps = cells
    write(default, _fake_record(default, configs[default.name]))  # finished
    write(full, json.dumps(_fake_record(full, configs[full.name]))[:-20])  # cut short: damaged
    write(masked, _fake_record(masked, configs[masked.name], complete=False))  # incomplete
    write(peer, _fake_record(peer, configs[default.name]))  # made with another configuration
    # steps: missing
    status = {c.name: cell_status(folder / f"{c.name}.json", configs[c.name]) for c in cells}
    assert status == {default.name: "finished", full.name: "damaged", masked.name: "damaged", peer.name: "changed",
                      steps.name: "missing"}
    # a setting the package gained after the cell was made, left at its default, does not make it another cell
    older = _fake_record(default, json.loads(json.dumps(configs[default.name])))
    del older["config"]["model_config"]["pigma_channels"]
    write(default, older)
    assert cell_status(folder / f"{default.name}.json", configs[default.name]) == "finished"
    changed = resolve_cell(default)
    changed["model_config"]["pigma_channels"] = 3
    assert cell_status(folder / f"{default.name}.json", changed) == "changed"
    # a setting the package retired since, holding its only former value, does not either
    retired = _fake_record(default, json.loads(json.dumps(configs[default.name])))
    retired["config"]["model_config"]["decoder"]["decoder_impl"] = "efficient"
    write(default, retired)
    assert cell_status(folder / f"{default.name}.json", configs[default.name]) == "finished"
    retired["config"]["model_config"]["decoder"]["decoder_impl"] = "reference"
    write(default, retired)
    assert cell_status(folder / f"{default.name}.json", configs[default.name]) == "changed"
    write(default, _fake_record(default, configs[default.name]))
    # where a cell runs does not make it another cell
    assert cell_status(folder / f"{default.name}.json", resolve_cell(default, accelerator="gpu")) == "finished"

    ran = []

    def fake_run(cell, config, out, progress=False, source=None):
        ran.append(cell.name)
        record = _fake_record(cell, config)
        (out / "cells" / f"{cell.name}.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(ablate, "run_cell", fake_run)
    lines = []
    counts = run_grid(cells, tmp_path, log=lines.append)
    assert ran == [full.name, masked.name, peer.name, steps.name]
    assert counts == {"finished": 1, "ran": 4}
    assert "damaged: redone" in lines[1] and "another config" in lines[3] and "left, about" in lines[-1]
    ran.clear()
    assert run_grid(cells, tmp_path, log=lines.append) == {"finished": 5, "ran": 0} and ran == []


@pytest.mark.slow
def test_a_tiny_cell_is_reproduced_by_its_seed(tmp_path, capsys):
    import torch

    grid_file, alone = tmp_path / "tiny.json", tmp_path / "alone.json"
    grid_file.write_text(json.dumps(TINY))
    alone.write_text(json.dumps({**TINY, "axes": {}}))
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["ablate", str(grid_file), "--out", str(a)]) == 0
    assert main(["ablate", str(alone), "--out", str(b), "--model", "boltzformer", "--seeds", "3", "4"]) == 0
    first = json.loads((a / "cells" / "default__seed3.json").read_text())
    again = json.loads((b / "cells" / "default__seed3.json").read_text())
    assert len(first["images"]) == 6 and {r["bucket"] for r in first["images"]} == {"tiny", "small", "large"}
    assert [(r["dice"], r["pred_area_fraction"]) for r in first["images"]] == [(r["dice"], r["pred_area_fraction"]) for r in again["images"]]
    assert first["config"]["model_config"]["decoder"]["num_layers"] == 3 and first["seed"] == 3
    assert "commit" in first and first["wall_seconds"]["total"] > 0
    # the same seed trains the same weights, bit for bit (so every score of the cell is the same); another seed does not
    weights = lambda run, cell: torch.load(run / "runs" / cell / "last.ckpt", weights_only=True)["state_dict"]  # noqa: E731
    wa, wb, wc = weights(a, "default__seed3"), weights(b, "default__seed3"), weights(b, "default__seed4")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    # the peer trained and was scored by the same path
    peer = json.loads((a / "cells" / "peer=monai-unet__seed3.json").read_text())
    assert peer["config"]["model"] == "monai-unet" and len(peer["images"]) == 6 and any(r["dice"] > 0 for r in peer["images"])
    assert (a / "summary.md").is_file() and (a / "summary.png").is_file()
    # a rerun has nothing to do
    capsys.readouterr()
    assert main(["ablate", str(grid_file), "--out", str(a)]) == 0
    assert "2 finished, 0 to run" in capsys.readouterr().out


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    assert main(["ablate"]) == 2
    assert main(["ablate", "--summary", str(tmp_path / "nothing")]) == 2
    assert "no 'cells' folder" in capsys.readouterr().err
    assert main(["ablate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
