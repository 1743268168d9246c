"""Helpers of the command-line tests (imported by name, as tests/evaluate/evaluate_helpers.py): the micro
training arguments and the check that a command fails with one line naming the problem."""

from __future__ import annotations

from boltzformer.cli import main

MICRO = ["--max-steps", "2", "--batch-size", "2", "--val-every", "2", "--val-batches", "1", "--image-size", "64",
         "--set", "num_layers=3", "--set", "num_queries=4", "--quiet"]


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err
