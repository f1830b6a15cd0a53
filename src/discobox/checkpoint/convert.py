"""Official DiscoBox checkpoints (mmdet 2.10 / mmcv) -> discobox checkpoints.

An official checkpoint is mmcv's container ``{"meta": {...}, "state_dict": {...}, ["optimizer"]}``
whose keys start with ``backbone.``, ``neck.``, ``mask_feat_head.`` and ``bbox_head.``
(docs/method.md §9). Our modules keep the official attribute names (``modeling/solov2/``), so
the key table is the identity on those four prefixes. :data:`KEY_RENAMES` and
:data:`IGNORED_KEYS` below are the whole table; nothing else edits key strings:

- renames (older writers of the same architecture): a ``module.`` prefix (saved from a
  ``DataParallel`` wrapper); ``conv_offset_mask`` (mmcv < 1.0 name of the DCNv2 offset/mask conv,
  now ``conv_offset``); ``layer*.*.conv2_offset`` (mmdet 1.x keeps the bottleneck's offset conv
  beside ``conv2``; ours lives inside it, ``conv2.conv_offset``). Normalisation layers need no
  rule: mmcv's ``ConvModule`` names GroupNorm ``gn`` as we do, and ResNet keeps ``bn1..bn3``.
- ignored, and reported by name: EMA / teacher copies (mmdet ``EMAHook`` buffers ``ema_*``,
  ``teacher.``/``tsw.``/``ema_model.`` prefixes; the official teacher is not a module, so its
  checkpoints have none, §9) and the ImageNet classifier ``backbone.fc.*``.

Every mapped tensor's shape is checked against the model of the chosen config; unmapped source
keys, missing model keys and shape mismatches are reported by name and, in strict mode (the
default), raise :class:`ConversionError`. Missing ``num_batches_tracked`` counters are filled
with 0 (older checkpoints lack them). Without a config the recipe is inferred from the
tensor shapes (depth, ResNeXt groups, DCN, number of classes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, available_recipes, config_from_dict, load_config
from ..errors import DiscoboxError, MissingFileError
from ..modeling.build import build_model
from ..modeling.solov2.backbone import ARCHS
from .io import atomic_save, load_checkpoint_file
from .zoo import sha256_file, verify_weights

logger = logging.getLogger("discobox")

OFFICIAL_PREFIXES = ("backbone.", "neck.", "mask_feat_head.", "bbox_head.")

# (source-key regex, replacement, why): applied in order to every kept key.
KEY_RENAMES: tuple[tuple[str, str, str], ...] = (
    (r"^module\.", "", "DataParallel 'module.' prefix"),
    (r"\.conv_offset_mask\.", ".conv_offset.", "mmcv<1.0 DCNv2 offset conv name"),
    (
        r"^(backbone\.layer\d+\.\d+)\.conv2_offset\.",
        r"\1.conv2.conv_offset.",
        "mmdet 1.x bottleneck DCN offset conv beside conv2",
    ),
)

# (source-key regex, why): dropped before renaming, listed in the report.
IGNORED_KEYS: tuple[tuple[str, str], ...] = (
    (r"^(module\.)?ema_", "EMA copy (mmdet EMAHook buffer)"),
    (r"^(module\.)?(teacher|tsw|ema_model|model_ema)\.", "EMA teacher copy"),
    (r"^(module\.)?backbone\.fc\.", "ImageNet classifier"),
)

_RENAMES = tuple((re.compile(p), r, why) for p, r, why in KEY_RENAMES)
_IGNORED = tuple((re.compile(p), why) for p, why in IGNORED_KEYS)
_MAX_LISTED = 12


class ConversionError(DiscoboxError, RuntimeError):
    """A checkpoint cannot be mapped onto the model; the message names the keys."""


@dataclass
class ConversionReport:
    """What happened to every key (source names on the left, ours on the right).

    Attributes:
        mapped: number of source tensors copied into the model state.
        renamed: ``(source key, our key)`` pairs that a rename rule changed.
        ignored: ``(source key, reason)`` pairs that were dropped on purpose.
        unmapped: source keys with no counterpart in the model.
        missing: model keys that no source key provides.
        mismatched: ``(key, source shape, model shape)``.
        defaulted: model keys filled with a default (``num_batches_tracked`` = 0).
    """

    mapped: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.missing or self.mismatched)

    def problems(self) -> str:
        """One line per failure class, naming up to a dozen keys each."""

        def listed(items: list[str]) -> str:
            more = f" ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            return ", ".join(items[:_MAX_LISTED]) + more

        lines = []
        if self.unmapped:
            lines.append(f"{len(self.unmapped)} unmapped checkpoint keys: {listed(self.unmapped)}")
        if self.missing:
            lines.append(f"{len(self.missing)} model keys missing: {listed(self.missing)}")
        if self.mismatched:
            items = [f"{k} {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"{len(self.mismatched)} shape mismatches: {listed(items)}")
        return "; ".join(lines)

    def summary(self) -> str:
        text = (f"{self.mapped} tensors mapped ({len(self.renamed)} renamed), "
                f"{len(self.ignored)} ignored, {len(self.defaulted)} defaulted")
        if self.ignored:
            text += "; ignored: " + ", ".join(k for k, _ in self.ignored[:_MAX_LISTED])
        return text + ("" if self.ok else "; " + self.problems())


def official_key_to_ours(key: str) -> tuple[str | None, str]:
    """Apply the key table to one source key.

    Returns ``(our key, note)``; ``our key`` is ``None`` when the key is ignored (``note`` says
    why), and ``note`` lists the renames applied otherwise (empty for the identity).
    """
    for pattern, why in _IGNORED:
        if pattern.search(key):
            return None, why
    notes = []
    for pattern, repl, why in _RENAMES:
        new = pattern.sub(repl, key)
        if new != key:
            notes.append(why)
            key = new
    return key, "; ".join(notes)


def convert_state_dict(
    source: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map an official ``state_dict`` onto a model's keys and check every shape.

    Args:
        source: the official ``state_dict`` (any tensors; non-tensors are unmapped).
        expected: the target model's ``state_dict()`` (may live on the meta device; only keys,
            shapes and dtypes are read).

    Returns:
        ``(state, report)``: ``state`` holds the mapped tensors (cast to the model's dtype) plus
        defaulted ``num_batches_tracked``; keys in ``report.missing`` are absent.
    """
    report = ConversionReport()
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    mismatched: set[str] = set()
    for key, value in source.items():
        ours, note = official_key_to_ours(key)
        if ours is None:
            report.ignored.append((key, note))
            continue
        if ours not in expected or not isinstance(value, Tensor):
            report.unmapped.append(key)
            continue
        if ours in out:
            raise ConversionError(f"checkpoint keys {origin[ours]!r} and {key!r} both map to "
                                  f"{ours!r}")
        target = expected[ours]
        if tuple(value.shape) != tuple(target.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            mismatched.add(ours)
            continue
        out[ours] = value.detach().to(dtype=target.dtype)
        origin[ours] = key
        report.mapped += 1
        if ours != key:
            report.renamed.append((key, ours))
    for key, target in expected.items():
        if key in out:
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=target.dtype)
            report.defaulted.append(key)
        elif key not in mismatched:
            report.missing.append(key)
    return out, report


def is_official_checkpoint(obj: Any) -> bool:
    """True for an mmcv container (``state_dict`` entry) holding mmdet DiscoBox key names."""
    if not isinstance(obj, dict) or "model" in obj:
        return False
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        return False
    return any((official_key_to_ours(k)[0] or "").startswith(OFFICIAL_PREFIXES) for k in state)


def _official_state(obj: dict, path: str | Path) -> dict[str, Tensor]:
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path}: no state_dict of tensors found (keys: {list(obj)[:8]})")
    return state


def _weight(state: Mapping[str, Tensor], key: str, path: str | Path) -> Tensor:
    for k, v in state.items():
        if official_key_to_ours(k)[0] == key:
            return v
    raise ConversionError(
        f"{path}: not a DiscoBox/SOLOv2 checkpoint: it has no {key!r} "
        f"(first keys: {', '.join(list(state)[:6])})"
    )


def infer_recipe(state: Mapping[str, Tensor], *, path: str | Path = "checkpoint") -> str:
    """The built-in recipe whose architecture matches an official ``state_dict``.

    Reads the ResNet depth (``layer3`` blocks), ResNeXt groups (``layer1.0.conv2``), DCN in the
    backbone and head (``conv_offset`` keys) and the class count (``solo_cate``).

    Raises:
        ConversionError: not a SOLOv2 checkpoint, or no recipe matches (pass ``--config``).
    """
    num_classes = int(_weight(state, "bbox_head.solo_cate.bias", path).shape[0])
    conv2 = _weight(state, "backbone.layer1.0.conv2.weight", path)
    ours = {official_key_to_ours(k)[0] for k in state}
    layer3 = re.compile(r"backbone\.layer3\.(\d+)\.")
    blocks = {int(m.group(1)) for k in ours if k and (m := layer3.match(k))}
    groups = int(conv2.shape[0]) // int(conv2.shape[1])
    signature = {
        "layer3_blocks": len(blocks),
        "groups": groups,
        "dcn": "backbone.layer2.0.conv2.conv_offset.weight" in ours,
        "dcn_head": "bbox_head.kernel_convs.0.conv.conv_offset.weight" in ours,
        "num_classes": num_classes,
    }

    for name in available_recipes():
        cfg = load_config(name)
        b = cfg.model.backbone
        _, layers, arch_groups, _ = ARCHS[b.name]
        candidate = {
            "layer3_blocks": layers[2],
            "groups": arch_groups,
            "dcn": b.dcn,
            "dcn_head": cfg.model.dcn_head,
            "num_classes": cfg.model.num_classes,
        }
        if candidate == signature and cfg.model.seg_feat_channels == 512:
            return name
    raise ConversionError(
        f"{path}: no built-in recipe matches this checkpoint ({signature}); pass --config"
    )


def _resolve_config(
    config: str | Path | Config | None, state: Mapping[str, Tensor], path: str | Path
) -> Config:
    if isinstance(config, Config):
        return config
    if config is not None:
        return load_config(config)
    name = infer_recipe(state, path=path)
    logger.info("%s: architecture matches recipe %s", path, name)
    return load_config(name)


def expected_state_dict(cfg: Config) -> dict[str, Tensor]:
    """The model's ``state_dict`` on the meta device (keys, shapes, dtypes; no memory)."""

    with torch.device("meta"):
        model = build_model(cfg.replace(**{"model.backbone.weights": None}))
    return model.state_dict()


def _source_info(obj: dict, path: str | Path, report: ConversionReport) -> dict[str, Any]:
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    info: dict[str, Any] = {"file": str(path), "format": "mmdet (official DiscoBox)"}
    for key in ("mmdet_version", "epoch", "iter"):
        if isinstance(meta.get(key), str | int | float):
            info[key] = meta[key]
    classes = meta.get("CLASSES")
    if isinstance(classes, list | tuple) and all(isinstance(c, str) for c in classes):
        info["classes"] = list(classes)
    info["ignored_keys"] = [k for k, _ in report.ignored]
    info["renamed_keys"] = len(report.renamed)
    return info


def official_to_ours(
    obj: dict,
    *,
    path: str | Path,
    config: str | Path | Config | None = None,
    strict: bool = True,
) -> tuple[dict[str, Any], ConversionReport]:
    """Convert a loaded official checkpoint to our layout (without writing anything).

    Returns:
        ``({"model": state_dict, "config": cfg.to_dict(), "source": {...}}, report)``.

    Raises:
        ConversionError: in strict mode, any unmapped, missing or mismatched key (all named);
            in any mode, a checkpoint that is not a SOLOv2 model.
    """
    state = _official_state(obj, path)
    cfg = _resolve_config(config, state, path)
    converted, report = convert_state_dict(state, expected_state_dict(cfg))
    if report.mapped == 0:
        raise ConversionError(f"{path}: no key matches the model; {report.problems()}")
    if not report.ok:
        if strict:
            raise ConversionError(f"{path} does not match the model of this config: "
                                  f"{report.problems()}")
        logger.warning("%s (non-strict): %s", path, report.problems())
    if report.ignored:
        logger.info("%s: ignored %d keys: %s", path, len(report.ignored),
                    ", ".join(k for k, _ in report.ignored[:_MAX_LISTED]))
    return {"model": converted, "config": cfg.to_dict(),
            "source": _source_info(obj, path, report)}, report


def maybe_convert_official(
    ckpt: dict, *, path: str | Path, config: str | Path | Config | None, strict: bool = True
) -> dict:
    """``load_model``'s hook: official checkpoints are converted on load, others pass through."""
    if not is_official_checkpoint(ckpt):
        return ckpt
    converted, _ = official_to_ours(ckpt, path=path, config=config, strict=strict)
    return converted


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    config: str | Path | Config | None = None,
    strict: bool = True,
) -> ConversionReport:
    """Read an official checkpoint, write ours atomically (``discobox convert``).

    The output is ``{"model": state_dict, "config": cfg.to_dict(), "source": {...},
    "sha256": <sha256 of src>}``; it loads with ``discobox.load_model(dst)`` without a config.
    In non-strict mode missing tensors keep the model's fresh initialisation.
    """

    src = Path(src)
    if not src.is_file():
        raise MissingFileError(f"checkpoint not found: {src}")
    digest = verify_weights(src) or sha256_file(src)
    obj = load_checkpoint_file(src)
    if "model" in obj and isinstance(obj.get("config"), dict):
        raise ConversionError(f"{src} is already a discobox checkpoint; nothing to convert")
    converted, report = official_to_ours(obj, path=src, config=config, strict=strict)
    state = converted["model"]
    if report.missing or report.mismatched:
        cfg = config_from_dict(converted["config"], source=str(src))
        model = build_model(cfg.replace(**{"model.backbone.weights": None}))
        model.load_state_dict(state, strict=False)
        state = model.state_dict()
    atomic_save({"model": state, "config": converted["config"], "source": converted["source"],
                 "sha256": digest}, dst)
    logger.info("wrote %s: %s", dst, report.summary())
    return report
