"""What a command or the worker needs at hand: settings and the domain config."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from tierflow.pipeline.config.domain import Config, load_config
from tierflow.pipeline.config.settings import Settings


@dataclass(frozen=True)
class Context:
    settings: Settings
    config: Config


def from_args(args: argparse.Namespace) -> Context:
    settings = Settings.from_env()
    if getattr(args, "config", None) is not None:
        settings = replace(settings, config_path=args.config)
    return Context(settings, load_config(settings.config_path))
