"""argparse flags from a flat dataclass of settings, for the script-style tools (collect_demos, bc_pretrain, learning_libero).

The trainer recipe uses OmegaConf configs instead; these tools take one flag per field.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def dataclass_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """One `--field-name` flag per field of `cls`, typed by its default (bool -> --x/--no-x switch, list -> nargs="+")."""
    parser = argparse.ArgumentParser(description=description)
    defaults: Any = cls()
    for f in dataclasses.fields(cls):
        value, flag = getattr(defaults, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)  # --x / --no-x
        elif isinstance(value, list):
            parser.add_argument(flag, type=type(value[0]) if value else str, nargs="+", default=value)  # an empty list default takes strings
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser
