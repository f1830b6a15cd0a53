"""Typed, frozen configuration: defaults in dataclasses, recipes as YAML deltas, dotted overrides.

A recipe file holds only the keys that differ from the defaults below (the defaults are the
paper's ResNet-50 COCO recipe, docs/method.md §1, §6, §7)::

    model:
      num_classes: 20
    solver:
      epochs: 72
      steps: [54, 66]

Command-line overrides use dotted keys, e.g. ``solver.lr=0.02 data.batch_size=4``; values are
parsed as YAML scalars/lists. Unknown keys raise :class:`ConfigError` with a "did you mean" hint.
Config keys equal the keyword names of the constructors they feed (``modeling/build.py``); the
``loss``, ``crf`` and ``corr`` sections are the parameter dataclasses of the modules they
configure (``LossParams``, ``CRFParams``, ``CorrParams``).

A user YAML may start with ``_base_: <recipe name or path>`` (a path is relative to the YAML's
folder): the base is loaded first (recursively; a cycle is an error) and the file's keys
override it, section by section.

Schedules that follow ``solver.max_iter``: in a fixed-iteration schedule (``solver.max_iter``
set), ``solver.steps``, ``solver.warmup_iters``, ``teacher.start_iter`` and
``loss.box_warmup_iters`` may be written as fractions of ``solver.max_iter``. A number strictly
between 0 and 1 is a fraction; it becomes ``floor(fraction * max_iter + 0.5)`` iterations once
every layer (``_base_`` chain, file, overrides) is merged, so ``solver.max_iter=720`` alone
rescales a recipe written this way (the CPU recipe: steps 0.8 and 14/15, warm-up 1/15, teacher
and box warm-up at 1/3). A whole number is iterations, as given. With ``solver.max_iter`` unset
(the paper's epoch-based recipes) a fraction is an error. :func:`load_config`,
:func:`apply_overrides` (and :meth:`Config.replace`) and :func:`config_from_dict` return
resolved configs: a :class:`Config` holds iterations only, so changing ``solver.max_iter`` of an
already loaded config rescales nothing.

Values that count, divide or loop are checked where a file or an override sets them
(``config_merge._MINIMUM``): ``data.batch_size=0`` is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_merge import FRACTION_KEYS, REMOVED_KEYS, is_fraction, merge, to_plain
from .errors import ConfigError

# The only upward imports of the config layer: the ``loss``, ``crf`` and ``corr`` sections are
# the parameter classes of the modules they configure (no mirror class, no mapper); each of
# these modules is a leaf that imports nothing.
from .modeling.boxsup.params import LossParams
from .modeling.correspondence.params import CorrParams
from .modeling.crf.params import CRFParams

logger = logging.getLogger("discobox")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"  # resnet18/34/50/101, resnext101_32x4d, resnext101_64x4d
    dcn: bool = False  # DCNv2 in stages 2-4 (docs/method.md §2.2)
    weights: str | None = None  # path to a torchvision state dict; None = random init
    frozen_stages: int = 1
    norm_eval: bool = True


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256
    seg_feat_channels: int = 512  # head tower width (§2.5)
    stacked_convs: int = 4
    kernel_out_channels: int = 256  # E (§2.7)
    mask_mid_channels: int = 128  # mask-feature branch width (§2.6)
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    scale_ranges: tuple[tuple[int, int], ...] = (
        (1, 96),
        (48, 192),
        (96, 384),
        (192, 768),
        (384, 2048),
    )
    sigma: float = 0.2
    dcn_head: bool = False  # DCNv2 in both towers and the mask-feature branch


@dataclass(frozen=True)
class TestConfig:
    score_thr: float = 0.1
    mask_thr: float = 0.4
    nms_pre: int = 500
    update_thr: float = 0.05
    kernel: str = "gaussian"
    sigma: float = 2.0
    max_per_img: int = 100
    # (height, width): sliding-window inference for models trained with data.train_crop; ours
    tile: tuple[int, int] | None = None
    tile_overlap: float = 0.25  # fraction of the window shared by neighbours
    # ours, off by default: refine every detection's 1/4-res soft mask with the crf.* CRF
    # ("meanfield" or "faithful") inside the mask's own box grown by refine_margin pixels;
    # the meanfield refiner's window is refine_kernel_size (crf.mf_kernel_size is the teacher's)
    refine: str = "none"
    refine_margin: int = 1
    refine_kernel_size: int = 3


@dataclass(frozen=True)
class TeacherConfig:
    enabled: bool = True
    momentum: float = 0.999
    start_iter: int = 13000


@dataclass(frozen=True)
class GatesConfig:
    enabled: bool = True  # False = auxiliary losses always on (useful for short schedules)
    init: float = 2.0
    momentum: float = 0.9
    ts_thresh: float = 0.3
    corr_thresh: float = 0.2


@dataclass(frozen=True)
class DataConfig:
    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    class_names: tuple[str, ...] | None = None
    # the training json's category id of each label (set by data.build.resolve_dataset_defaults
    # when training, stored in checkpoints so that predictions carry the dataset's ids)
    category_ids: tuple[int, ...] | None = None
    train_scales: tuple[tuple[int, int], ...] = ((1333, 800),)  # (long side, short side)
    test_scale: tuple[int, int] = (1333, 800)
    flip_prob: float = 0.5
    # (height, width): random crop after the train resize, for small objects in big images; ours
    train_crop: tuple[int, int] | None = None
    batch_size: int = 2  # images per process
    num_workers: int = 2


@dataclass(frozen=True)
class SolverConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 2000
    warmup_ratio: float = 0.01
    epochs: int = 36
    steps: tuple[int, ...] = (33, 35)  # epochs after which lr is multiplied by gamma
    gamma: float = 0.1
    max_iter: int | None = None  # if set, overrides epochs; steps are then in iterations
    clip_grad: float | None = 35.0
    amp: str = "fp16"  # "fp16" (static scale, §2.9), "bf16" or "none"; CUDA only
    loss_scale: float = 512.0


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/discobox"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    log_period: int = 20
    checkpoint_period: int = 1000  # iterations
    eval_period: int = 0  # iterations; 0 = at the end only
    keep_checkpoints: int = 2
    tensorboard: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    test: TestConfig = field(default_factory=TestConfig)
    loss: LossParams = field(default_factory=LossParams)
    crf: CRFParams = field(default_factory=CRFParams)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    corr: CorrParams = field(default_factory=CorrParams)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **dotted: Any) -> Config:
        """Return a copy with dotted keys replaced, e.g. ``cfg.replace(**{"solver.lr": 0.1})``."""
        return apply_overrides(self, dotted)


def resolve_schedule(cfg: Config, source: str = "config") -> Config:
    """``cfg`` with every fraction of :data:`FRACTION_KEYS` turned into iterations:
    ``floor(fraction * solver.max_iter + 0.5)`` (module docstring). Whole numbers stay.

    Raises:
        ConfigError: a fraction while ``solver.max_iter`` is unset (an epoch-based schedule).
    """
    max_iter = cfg.solver.max_iter
    changes: dict[str, Any] = {}
    for key in FRACTION_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        items = value if isinstance(value, tuple) else (value,)
        if not any(is_fraction(v) for v in items):
            continue
        if max_iter is None:
            raise ConfigError(
                f"{source}: {key!r}={to_plain(value)!r} holds a fraction of solver.max_iter, "
                "which is not set (an epoch-based schedule); give iterations or set "
                "solver.max_iter")
        resolved = tuple(math.floor(v * max_iter + 0.5) if is_fraction(v) else v for v in items)
        changes[key] = list(resolved) if isinstance(value, tuple) else resolved[0]
    return merge(cfg, _nest(changes), prefix="", source=source) if changes else cfg


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str = "override") -> Config:
    """Apply dotted-key overrides (values already parsed) to ``cfg``; fractions of
    ``solver.max_iter`` among them are resolved against the result's ``solver.max_iter``."""
    return resolve_schedule(merge(cfg, _nest(overrides), prefix="", source=source), source)


def parse_cli_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; VALUE is read as YAML (numbers, lists, null, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value ({exc})") from exc
    return out


def available_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A recipe name (``discobox_r50_fpn_3x_coco``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    named = CONFIG_DIR / f"{path.stem if path.suffix else name_or_path}.yaml"
    if named.exists():
        return named
    if path.exists():
        return path
    close = difflib.get_close_matches(str(name_or_path), available_recipes(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"config {str(name_or_path)!r} is neither a file nor a recipe name{hint} "
        f"(recipes: {', '.join(available_recipes())})"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        delta = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not isinstance(delta, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    delta.pop("description", None)
    return delta


def _base_path(base: Any, path: Path) -> Path:
    """The file ``_base_`` of ``path`` names: relative to ``path``'s folder, else a recipe name
    or a path from the working directory."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: '_base_' must be a recipe name or a YAML path, got {base!r}")
    near = path.parent / base
    if near.is_file():
        return near
    try:
        return resolve_config_path(base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: _base_: {exc}") from None


def _config_from_file(path: Path, chain: tuple[Path, ...] = ()) -> Config:
    """Defaults, then the ``_base_`` chain of ``path`` (outermost first), then ``path``'s keys;
    fractions of ``solver.max_iter`` stay unresolved."""
    real = path.resolve()
    if real in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(real):], real))
        raise ConfigError(f"{path}: _base_ cycle: {cycle}")
    delta = _read_yaml(path)
    cfg = Config()
    if "_base_" in delta:
        cfg = _config_from_file(_base_path(delta.pop("_base_"), path), (*chain, real))
    return merge(cfg, delta, prefix="", source=str(path))


def load_config(
    name_or_path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
) -> Config:
    """Defaults, then the recipe/YAML delta (if given, after its ``_base_`` chain), then
    overrides (dotted keys); fractions of ``solver.max_iter`` are resolved last."""
    cfg = Config()
    source = "override"
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        cfg = _config_from_file(path)
        source = str(path)
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_cli_overrides(overrides)
        cfg = merge(cfg, _nest(overrides), prefix="", source="override")
        source = "override" if name_or_path is None else f"{source} + overrides"
    return resolve_schedule(cfg, source)


def config_from_dict(data: dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. stored in a checkpoint).

    Keys of :data:`REMOVED_KEYS` (a checkpoint written before their removal) are dropped, with a
    warning when the stored value differed from today's behaviour; any other unknown key raises
    :class:`ConfigError`.
    """
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, current in REMOVED_KEYS.items():
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            value = data[section].pop(name)
            if value != current:
                logger.warning("%s: ignoring the removed config key %s=%r (training-only; "
                               "behaves as %r now)", source, key, value, current)
    return resolve_schedule(merge(Config(), data, prefix="", source=source), source)
