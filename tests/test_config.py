"""The params loader is strict, and params.yaml, dvc.yaml and the config classes agree."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from lmforge.config import HubDataset, Params, deep_merge, load_params
from lmforge.errors import ConfigError
from support import REPO, default_params


def load(tmp_path, override: dict, drop: str | None = None) -> Params:
    raw = deep_merge(default_params(), override)
    if drop:
        *parents, last = drop.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[last]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_default_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "sample"
    assert params.pretrain.precision == "auto"


@pytest.mark.parametrize(
    ("override", "drop", "message"),
    [
        ({"pretrain": {"zero_stage": 5}}, None, "pretrain.zero_stage must be 0-3, got 5"),
        ({"pretrain": {"micro_batch_size": 0}}, None, "pretrain.micro_batch_size must be positive"),
        ({"pretrain": {"lr": "fast"}}, None, "pretrain.lr must be a number"),
        ({"pretrain": {"max_stepz": 3}}, None, "unknown key pretrain.max_stepz"),
        ({}, "model.hidden_size", "missing key model.hidden_size"),
        ({"model": {"num_layers": 2.5}}, None, "model.num_layers must be an integer"),
        ({"data": {"source": "s3"}}, None, "data.source must be one of sample, local, hf"),
        ({"pretrain": {"precision": "fp8"}}, None, "pretrain.precision must be one of"),
        (
            {"finetune": {"ner": {"max_seq_len": 512}}},
            None,
            "finetune.ner.max_seq_len must be between 16 and model.max_seq_len (128",
        ),
        ({"model": {"num_heads": 3}}, None, "must be divisible by model.num_heads"),
        ({"finetune": {"qa": {"init": "warm"}}}, None, "finetune.qa.init must be one of"),
        ({"pretrain": {"use_cache": True}}, None, "unknown key pretrain.use_cache"),
        (
            {"data": {"source": "local", "corpus_includes_task_text": False}},
            "data.local.corpus",
            "data.local.corpus is omitted and data.corpus_includes_task_text is false",
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path, override, drop, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, override, drop)
    assert message in str(err.value)


def test_local_corpus_may_be_omitted(tmp_path):
    assert (
        load(tmp_path, {"data": {"source": "local"}}, "data.local.corpus").data.local.corpus is None
    )
    assert load(tmp_path, {"data": {"local": {"corpus": None}}}).data.local.corpus is None


def test_scientific_notation_string_is_a_number(tmp_path):
    # YAML 1.1 reads 6e-4 (no dot) as a string; the loader must still take it.
    assert load(tmp_path, {"pretrain": {"lr": "6e-4"}}).pretrain.lr == pytest.approx(6e-4)


def test_params_yaml_sets_every_config_field():
    """params.yaml documents every key: none is left to a hidden default. Optional groups
    (a task's finetune entry or data files, default None) may be absent: absent means
    "not this task" (params-gpt2.yaml sets the generation ones)."""

    def walk(cls, raw, where):
        if cls is HubDataset:  # hub entries list only what differs from datasets' defaults
            return
        for f in dataclasses.fields(cls):
            optional_group = f.default is None and _field_class(cls, f.name) is not None
            if optional_group and f.name not in raw:
                continue
            assert f.name in raw, f"params.yaml lacks {where}{f.name}"
            if dataclasses.is_dataclass(f.type) or isinstance(raw[f.name], dict):
                sub = _field_class(cls, f.name)
                if sub is not None:
                    walk(sub, raw[f.name], f"{where}{f.name}.")

    walk(Params, default_params(), "")
    walk(Params, yaml.safe_load((REPO / "params-gpt2.yaml").read_text()), "")


def _field_class(cls, name):
    """The dataclass a field holds (also when it may be None), else None."""
    import typing

    hint = typing.get_type_hints(cls)[name]
    options = typing.get_args(hint) or (hint,)
    return next((o for o in options if dataclasses.is_dataclass(o)), None)


def _foreach_keys(stage: dict, raw: dict) -> list:
    """The keys a stage's foreach expands to: a list's items, or a params dict's keys."""
    items = stage.get("foreach", [None])
    if isinstance(items, str):  # ${group.sub}: one stage per key of that params group
        node = raw
        for part in items.strip("${}").split("."):
            node = node[part]
        return list(node)
    return items


def test_dvc_params_exist_in_config():
    """Every params key a dvc.yaml stage declares is a real config key, and every preset
    sets it: `cp params-X.yaml params.yaml && dvc repro` fails on a key it lacks."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    presets = sorted(REPO.glob("params-*.yaml"))
    assert len(presets) >= 4
    _check_stage_params(dvc, default_params())
    for preset in presets:
        try:
            _check_stage_params(dvc, yaml.safe_load(preset.read_text()))
        except AssertionError as error:
            raise AssertionError(f"{preset.name}: {error}") from None


def _check_stage_params(dvc: dict, raw: dict) -> None:
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for item in _foreach_keys(stage, raw):
            for key in body.get("params", []):
                key = key.replace("${key}", item) if item else key
                node = raw
                for part in key.split("."):
                    assert part in node, f"stage {name} declares unknown param {key}"
                    node = node[part]


def test_stage_defaults_match_dvc_paths():
    """`python -m stages.X` alone uses the same paths as dvc.yaml passes it."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        script = (REPO / "stages" / f"{name}.py").read_text()
        for flag, value in re.findall(r"--(\w+) (\S+)", cmd):
            assert f'"--{flag}"' in script, f"stages/{name}.py has no --{flag}"
            per_task = 'add_argument("task"' in script  # ${key} is the task argument
            if "${key}" in value and not per_task:  # the script requires the flag
                assert "required=True" in script, f"stages/{name}.py: --{flag} not required"
                continue
            assert _default_expression(value) in script, (
                f"stages/{name}.py: default of --{flag} is not {value} as in dvc.yaml"
            )


def _default_expression(value: str) -> str:
    """How a stage script spells the default of a dvc.yaml path (per-task ones too)."""
    if "/${key}" not in value:
        return f'Path("{value}")'
    folder, rest = value.split("/${key}")
    return f'Path("{folder}") / task' if not rest else f'Path("{folder}") / f"{{task}}{rest}"'
