"""Restore a trained model: checkpoint -> (SOLOv2 in eval mode, the Config it was trained with)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_cli_overrides,
)
from ..errors import CheckpointError
from ..modeling.build import build_model
from ..modeling.solov2.model import SOLOv2
from .convert import maybe_convert_official
from .io import load_checkpoint_file
from .zoo import verify_weights


def _state_dict_of(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(
        f"{path}: no model weights found (expected a 'model' or 'state_dict' key)")


def load_model(
    weights: str | Path,
    *,
    config: str | Path | Config | None = None,
    overrides: list[str] | None = None,
    strict: bool = True,
) -> tuple[SOLOv2, Config]:
    """Load a trained model and its config; returns ``(model in eval mode, cfg)``.

    Args:
        weights: a checkpoint written by ``discobox train`` or ``discobox convert`` (holds the
            config), an official DiscoBox checkpoint (converted on load, config inferred from
            its shapes), or a bare ``state_dict`` (then ``config`` is required).
        config: recipe name, YAML path or :class:`Config`; default: the checkpoint's own config.
        overrides: dotted ``key=value`` overrides applied on top (e.g. ``test.score_thr=0.3``).
        strict: fail on missing or unexpected keys, naming them.
    """
    path = Path(weights)
    verify_weights(path)  # sha256 check when the zoo records one for this file name
    ckpt = maybe_convert_official(load_checkpoint_file(path), path=path, config=config,
                                  strict=strict)  # official mmdet checkpoints convert on load
    if isinstance(config, Config):
        cfg = config
    elif config is not None:
        cfg = load_config(config)
    elif isinstance(ckpt.get("config"), dict):
        cfg = config_from_dict(ckpt["config"], source=str(path))
    else:
        raise ConfigError(f"{path} holds no config; pass one (a recipe name or YAML file)")
    if overrides:
        cfg = apply_overrides(cfg, parse_cli_overrides(list(overrides)))
    # Never read backbone init weights when restoring a trained model.
    cfg = cfg.replace(**{"model.backbone.weights": None})
    model = build_model(cfg)
    state = _state_dict_of(ckpt, path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path} does not match the model of this config: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    model.eval()
    return model, cfg

