"""The ``boltzformer`` command: one sub-command per job (``train``, ``evaluate``, ``predict``, ...)."""

from boltzformer.cli.commands import main

__all__ = ["main"]
