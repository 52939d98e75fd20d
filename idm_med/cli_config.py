"""``--config FILE.yaml`` for the training subcommands: options from a file (the command
line wins), and the resolved options of a run saved beside its output, so a run is
reproducible from one file."""

from __future__ import annotations

import argparse
from pathlib import Path

#: The subcommand parsers that take ``--config`` (filled when the CLI is built).
PARSERS: dict[str, argparse.ArgumentParser] = {}


def apply_config_file(args: argparse.Namespace, command: str) -> argparse.Namespace:
    """Fill options from ``--config FILE.yaml`` (keys: option names, ``-`` or ``_``);
    options given on the command line win. Unknown keys are an error naming the file."""
    if getattr(args, "config", None):
        _fill_from_file(args, command)
    if not args.output:
        raise ValueError(f"idm-med {command}: --output is required (option or config file)")
    return args


def _fill_from_file(args: argparse.Namespace, command: str) -> None:
    import yaml

    path = Path(args.config)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config file ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    parser = PARSERS[command]
    known = {a.dest for a in parser._actions}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in known or dest in ("help", "config"):
            raise ValueError(f"{path}: unknown option {key!r} for `idm-med {command}`")
        if getattr(args, dest) == parser.get_default(dest):
            setattr(args, dest, value)


def resolved_config(args: argparse.Namespace) -> str:
    """Every option of a run as YAML (what ``--config`` reads back)."""
    import yaml

    skip = {"func", "config", "verbose", "debug"}
    return yaml.safe_dump({k: v for k, v in vars(args).items() if k not in skip}, sort_keys=True)


def save_resolved_config(args: argparse.Namespace) -> None:
    """Write the run's resolved options to ``OUTPUT/config.yaml`` (atomically)."""
    from .datasets.atomic import atomic_write_text

    atomic_write_text(Path(args.output) / "config.yaml", resolved_config(args))
