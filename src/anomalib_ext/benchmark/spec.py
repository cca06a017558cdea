"""A benchmark table as data: datasets x models x recipes in one YAML file, run row by row.

Each entry of ``runs`` is one recipe; it is run on each of its ``datasets`` (names from the
file's ``datasets`` mapping) and becomes one ``anomalib-ext benchmark`` call per dataset. Keys are
the command's option names without ``--`` (``image-size``, ``model-args``, ``variants``, ...);
``defaults`` apply to every run, a run's own keys win. Lists become repeated values, mappings
(``model-args``) JSON, ``true`` a bare flag. ``section`` (the file's or a run's) may name ``{dataset}``::

    output: docs/benchmarks.md
    section: "Lite0 on {dataset}"
    work-dir: /tmp/anomalib_ext_table
    datasets: {mtd: ../shared/datasets/mtd, tire: datasets/tire}
    defaults: {backbone: efficientnet_lite0, image-size: 256, curve-every: 2}
    runs:
      - {model: RD4AD, datasets: [mtd, tire], epochs: 8, layers: [blocks.1, blocks.2, blocks.4]}
      - {model: Stfpm, datasets: [mtd], epochs: 8}

A dataset may be a mapping instead of a path: ``data`` is the path and its other keys are options
for every row on that dataset (between ``defaults`` and a run's own keys), e.g. an epoch budget that
gives each dataset the same number of optimiser steps::

    datasets: {tire: {data: datasets/tire, epochs: 40}, mtd: {data: ../shared/datasets/mtd, epochs: 11}}

``anomalib-ext benchmark --spec FILE`` runs them one after the other (one heavy job at a time);
``--dry-run`` prints the commands, ``--only TEXT`` keeps the rows whose model, label or dataset
contains ``TEXT``. Each row writes its checkpoints under ``work-dir``; the same row run again with
``--seed N`` writes beside it (``..._seedN``) and its table label gets `` (seed N)``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

FILE_KEYS = {"output", "section", "work-dir", "datasets", "defaults", "runs"}
RUN_ONLY_KEYS = {"datasets"}


class SpecError(ValueError):
    """A benchmark spec that cannot be run as written; the message names the file and the entry."""


def _option(key: str, value: object) -> list[str]:
    flag = f"--{key}"
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    if isinstance(value, list):
        return [flag, *(json.dumps(item) if isinstance(item, dict) else str(item) for item in value)]
    return [flag, str(value)]


def _dataset_options(path: Path, name: str, entry: object) -> dict[str, Any]:
    """A ``datasets`` entry as options: a path becomes ``{"data": path}``; a mapping must name its ``data``."""
    if isinstance(entry, dict):
        if not entry.get("data"):
            msg = f"Benchmark spec {path}: dataset {name!r} is a mapping without `data` (its folder)."
            raise SpecError(msg)
        return dict(entry)
    return {"data": entry}


def spec_commands(path: str | Path) -> list[list[str]]:
    """The ``anomalib-ext benchmark`` arguments of every row of the spec at ``path``, in order."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        msg = f"Cannot read benchmark spec {path}: {error}"
        raise SpecError(msg) from error
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not spec["runs"]:
        msg = f"Benchmark spec {path} needs a non-empty `runs` list."
        raise SpecError(msg)
    unknown = set(spec) - FILE_KEYS
    if unknown:
        msg = f"Benchmark spec {path}: unknown top-level key(s) {sorted(unknown)}; expected {sorted(FILE_KEYS)}."
        raise SpecError(msg)
    datasets = {name: _dataset_options(path, name, entry) for name, entry in (spec.get("datasets") or {}).items()}
    defaults: dict[str, Any] = spec.get("defaults") or {}
    commands = []
    for index, run in enumerate(spec["runs"]):
        if not isinstance(run, dict) or "model" not in run or not run.get("datasets"):
            msg = f"Benchmark spec {path}, run {index}: needs `model` and a `datasets` list."
            raise SpecError(msg)
        for name in run["datasets"]:
            if name not in datasets:
                msg = f"Benchmark spec {path}, run {index}: dataset {name!r} is not in `datasets` ({sorted(datasets)})."
                raise SpecError(msg)
            dataset = datasets[name]
            options = {**defaults, **dataset, **{k: v for k, v in run.items() if k not in RUN_ONLY_KEYS}}
            options = {"model": options.pop("model"), **options}  # the printed command starts with its model
            options["data"] = dataset["data"]
            if spec.get("output"):
                options.setdefault("output", spec["output"])
            section = options.get("section", spec.get("section"))
            if section:
                options["section"] = str(section).format(dataset=name)
            if spec.get("work-dir"):
                model = options["model"]
                label = str(options.get("label") or ("+".join(model) if isinstance(model, list) else model))
                label = label.replace(" ", "_").replace("/", "_")
                options.setdefault("work-dir", str(Path(spec["work-dir"]) / name / f"{index:02d}_{label}"))
            command: list[str] = []
            for key, value in options.items():
                command += _option(key, value)
            commands.append(command)
    return commands


def select(commands: list[list[str]], only: str | None) -> list[list[str]]:
    """The commands whose model, label or data contains ``only`` (all if ``None``)."""
    if not only:
        return commands

    def fields(command: list[str]) -> str:
        """Every value of ``--model`` (a run may list several), ``--label`` and ``--data``."""
        keys, values, taking = {"--model", "--label", "--data"}, [], False
        for token in command:
            if token.startswith("--"):
                taking = token in keys
            elif taking:
                values.append(token)
        return " ".join(values)

    return [command for command in commands if only in fields(command)]


def describe(command: list[str]) -> str:
    """The shell line that runs one row by hand."""
    return shlex.join(["anomalib-ext", "benchmark", *command])
