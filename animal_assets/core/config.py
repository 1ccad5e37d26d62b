"""Run configs: the shipped ones, and the config dataclass of every stage read from one.

Each stage owns its config dataclass (:data:`animal_assets.core.stages.STAGES`). The Dagster
``Config`` classes are built from them (:mod:`animal_assets.configs`), and the dagster-free
runner reads the same run-config YAML into them, so a value means the same thing in the UI, on
the command line and on a machine without dagster.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
from pathlib import Path


def step_params() -> dict[str, type]:
    """The config dataclass of each configurable stage, by stage name, in the stage table's order."""
    from animal_assets.core.stages import STAGES

    return {stage.name: stage.config for stage in STAGES if stage.config is not None}


def field_docs(config: type) -> dict[str, str]:
    """Each field's description, read from the comments beside it in the dataclass's source: the
    comment lines right above the field, then the comment on its own line, joined in one line."""
    source = textwrap.dedent(inspect.getsource(config))
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(config)}
    docs: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if name not in names or name in docs or not line.startswith("    ") or line.startswith("     "):
            continue
        above, row = [], number - 1
        while row in comments and row not in code_lines:
            above.insert(0, comments[row])
            row -= 1
        parts = above + ([comments[number]] if number in comments else [])
        docs[name] = " ".join(parts)
    return docs


def params_from_run_config(run_config: dict) -> dict[str, object]:
    """Parameters of every step from a Dagster run config (``ops: {asset: {config: {...}}}``)."""
    ops = (run_config or {}).get("ops", {}) or {}
    out = {}
    for name, cls in step_params().items():
        values = (ops.get(name) or {}).get("config", {}) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"run config ops.{name}: unknown field(s) {sorted(unknown)}")
        out[name] = cls(**values)
    return out


RUN_CONFIGS = Path(__file__).resolve().parents[1] / "run_configs"


def load_run_config(name_or_path: str) -> dict:
    """A shipped run config by name ("demo", "default") or a YAML/JSON file path."""
    path = RUN_CONFIGS / f"{name_or_path}.yaml"
    if not path.exists():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"run config {name_or_path}: no such shipped config or file")
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - yaml ships with dagster, not always alone
        raise RuntimeError(f"{path}: reading YAML needs pyyaml; pass a .json config") from err
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a readable YAML run config ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run config must be a mapping (ops: {{asset: {{config: ...}}}})")
    return config
