"""`pixpro params`: the parameters as the stages see them (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import PARAMS_OPTION, user_errors


@user_errors("params")
def main(params: Path = PARAMS_OPTION) -> None:
    """Print the params file as every stage reads it: validated, with each default filled in,
    as YAML. A params file that a stage would refuse gives the same one-line error here."""
    import yaml

    from pixpro.config import load_params
    from pixpro.config_base import to_dict

    typer.echo(yaml.safe_dump(to_dict(load_params(params)), sort_keys=False, default_flow_style=None), nl=False)
