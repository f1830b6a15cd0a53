import pytest

from discobox.config import (
    Config,
    ConfigError,
    available_recipes,
    config_from_dict,
    load_config,
    parse_cli_overrides,
)

SEED_RECIPES = [
    "discobox_r50_fpn_3x_coco",
    "discobox_r101_dcn_fpn_3x_coco",
    "discobox_x101_dcn_fpn_3x_coco",
    "discobox_r50_fpn_6x_voc",
    "discobox_r101_fpn_6x_voc",
]


def test_defaults_are_the_paper_r50_recipe():
    cfg = Config()
    assert cfg.solver.lr == 0.01 and cfg.solver.steps == (33, 35) and cfg.solver.epochs == 36
    assert cfg.model.num_grids == (40, 36, 24, 16, 12)
    assert cfg.test.mask_thr == 0.4 and cfg.test.nms_pre == 500
    assert cfg.loss.mode == "box" and cfg.crf.mode == "faithful"
    assert cfg.teacher.momentum == 0.999 and cfg.teacher.start_iter == 13000


@pytest.mark.parametrize("name", SEED_RECIPES)
def test_seed_recipes_load_in_box_mode(name):
    assert name in available_recipes()
    cfg = load_config(name)
    assert cfg.loss.mode == "box"
    assert cfg.loss.box_warmup_iters == 0  # the paper's recipes: official losses only
    assert cfg.loss.sigmoid_grad_floor == 0.0
    assert cfg.teacher.momentum == 0.999  # the official EMA


def test_cpu_recipe_and_demo_warm_up_on_the_filled_boxes_until_the_teacher_starts(tmp_path):
    """Random init (CPU recipe, demo): loss_boxwarm runs out when the EMA teacher starts, and
    the box-mode mask losses have a floor on the sigmoid's gradient; the CPU recipe's EMA
    teacher has momentum 0.99, the demo's the official 0.999."""
    from discobox.engine.demo import demo_config

    cpu = load_config("discobox_r18_fpn_cpu")
    assert cpu.loss.box_warmup_iters == cpu.teacher.start_iter == 1000
    demo = demo_config(tmp_path, tmp_path / "out", iterations=423, seed=0, full=False,
                       class_names=("a", "b"))
    assert demo.loss.box_warmup_iters == demo.teacher.start_iter == 141
    # and floor the mask losses' sigmoid gradient
    assert cpu.loss.sigmoid_grad_floor == demo.loss.sigmoid_grad_floor == 0.01
    # an EMA teacher that follows the student within ~100 iterations; the demo keeps 0.999
    assert cpu.teacher.momentum == 0.99 and demo.teacher.momentum == 0.999


def test_recipe_specifics():
    voc = load_config("discobox_r50_fpn_6x_voc")
    assert voc.model.num_classes == 20 and len(voc.data.class_names) == 20
    assert voc.test.mask_thr == 0.5 and voc.solver.warmup_ratio == 0.001
    assert voc.solver.steps == (54, 66)
    x101 = load_config("discobox_x101_dcn_fpn_3x_coco")
    assert x101.model.backbone.dcn and x101.model.dcn_head
    assert len(x101.data.train_scales) == 6


def test_overrides_and_yaml_values():
    cfg = load_config(None, ["solver.lr=0.02", "data.train_scales=[[512,320]]", "loss.mode=full"])
    assert cfg.solver.lr == 0.02
    assert cfg.data.train_scales == ((512, 320),)
    assert cfg.loss.mode == "full"
    assert parse_cli_overrides(["a.b=null"]) == {"a.b": None}


@pytest.mark.parametrize(
    "override,expected",
    [
        ("solver.lrr=1", "did you mean 'solver.lr'"),
        ("modle.num_classes=3", "did you mean 'model'"),
        ("crf.mode=bogus", "must be one of"),
        ("loss.mode=points", "'loss.mode' must be one of"),
        ("test.refine=densecrf", "'test.refine' must be one of"),
        ("loss.box_warmup_iters=-1", "'loss.box_warmup_iters' must be >= 0"),
        ("loss.box_warmup_weight=-0.5", "'loss.box_warmup_weight' must be >= 0"),
        ("solver.lr=abc", "'solver.lr' must be a number"),
        ("solver.lr", "not KEY=VALUE"),
        ("model.num_grids=[1,2]", None),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    if expected is None:
        assert load_config(None, [override]).model.num_grids == (1, 2)
        return
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_exponent_notation_numbers(tmp_path):
    """5e-4 (no dot: a string to YAML 1.1) is a number in overrides and in a config file."""
    cfg = load_config(None, ["solver.lr=5e-4", "loss.sigmoid_grad_floor=1E-3",
                             "solver.max_iter=2e3"])
    assert cfg.solver.lr == 5e-4 and cfg.loss.sigmoid_grad_floor == 1e-3
    assert cfg.solver.max_iter == 2000 and isinstance(cfg.solver.max_iter, int)
    p = tmp_path / "exp.yaml"
    p.write_text("solver:\n  lr: 2.5e-3\n  weight_decay: 1e-4\n")
    assert load_config(p).solver.weight_decay == 1e-4
    for bad in ("solver.max_iter=2.5e0", "solver.lr=1e-4x"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_bad_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("solver:\n  lr_typo: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*solver.lr_typo"):
        load_config(p)


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'discobox_r50_fpn_3x_coco'"):
        load_config("discobox_r50_fpn_3x_cocoo")


def test_round_trip_through_dict():
    cfg = load_config("discobox_r101_dcn_fpn_3x_coco", ["solver.max_iter=10"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_removed_keys_are_an_error_for_users_and_dropped_from_old_checkpoints(caplog):
    """A deleted option named by a user says it was removed; an old checkpoint's config that
    stores it still loads (its value only mattered for training)."""
    import logging

    from discobox.config import REMOVED_KEYS, ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="'loss.ts_object_thresh' was removed"):
        load_config(None, ["loss.ts_object_thresh=0.5"])
    old = load_config("discobox_r18_fpn_cpu").to_dict()
    for key, value in REMOVED_KEYS.items():
        section, name = key.split(".")
        old[section][name] = value
    caplog.set_level(logging.WARNING, logger="discobox")
    assert config_from_dict(old) == load_config("discobox_r18_fpn_cpu")
    assert caplog.text == ""  # stored values equal today's behaviour: nothing to say
    old["loss"]["ts_object_thresh"] = 0.5
    assert config_from_dict(old) == load_config("discobox_r18_fpn_cpu")
    assert "loss.ts_object_thresh=0.5" in caplog.text
    with pytest.raises(ConfigError, match="unknown config key 'loss.nope'"):
        config_from_dict({"loss": {"nope": 1}})


@pytest.mark.parametrize(
    "override,expected",
    [
        ("data.batch_size=0", "'data.batch_size' must be >= 1"),
        ("data.num_workers=-1", "'data.num_workers' must be >= 0"),
        ("train.checkpoint_period=0", "'train.checkpoint_period' must be >= 1"),
        ("train.log_period=0", "'train.log_period' must be >= 1"),
        ("train.eval_period=-5", "'train.eval_period' must be >= 0"),
        ("train.keep_checkpoints=-1", "'train.keep_checkpoints' must be >= 0"),
        ("solver.max_iter=0", "'solver.max_iter' must be >= 1"),
        ("solver.epochs=0", "'solver.epochs' must be >= 1"),
        ("solver.warmup_iters=-1", "'solver.warmup_iters' must be"),
        ("solver.steps=[10,-1]", "every value of 'solver.steps' must be >= 0"),
        ("teacher.start_iter=-3", "'teacher.start_iter' must be >= 0"),
        ("model.num_classes=0", "'model.num_classes' must be >= 1"),
        ("data.train_scales=[[640,0]]", "every value of 'data.train_scales' must be >= 1"),
        ("test.tile=[0,64]", "every value of 'test.tile' must be >= 1"),
    ],
)
def test_counts_and_periods_below_their_least_value_name_the_key(override, expected):
    """Values that divide or loop (batch size, periods, iteration counts) fail at load time with
    one line naming the key, on every load path: overrides, a file, replace, a stored config."""
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)
    key, value = override.split("=", 1)
    with pytest.raises(ConfigError, match=expected):
        Config().replace(**parse_cli_overrides([override]))
    section, name = key.split(".")
    import yaml

    with pytest.raises(ConfigError, match=expected):
        config_from_dict({section: {name: yaml.safe_load(value)}})


def test_least_values_in_a_file_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'data.batch_size' must be >= 1, got 0"):
        load_config(p)
    # the least values themselves, and an unset max_iter, are fine
    cfg = load_config(None, ["data.batch_size=1", "train.eval_period=0", "solver.max_iter=null",
                             "data.num_workers=0", "train.keep_checkpoints=0"])
    assert cfg.data.batch_size == 1 and cfg.solver.max_iter is None


def test_base_chain_inherits_and_the_child_wins(tmp_path):
    """``_base_``: a recipe name or a path relative to the YAML's folder, two levels deep; the
    child's keys override the base's section by section, command-line overrides win last."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "mid.yaml").write_text(
        "_base_: discobox_r18_fpn_cpu\nsolver:\n  lr: 0.02\ndata:\n  batch_size: 2\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("description: mine\n_base_: ../mid.yaml\ndata:\n  batch_size: 3\n"
                     "  train_json: my.json\n")
    cfg = load_config(child, ["train.log_period=7"])
    cpu = load_config("discobox_r18_fpn_cpu")
    assert cfg.data.batch_size == 3 and cfg.data.train_json == "my.json"  # child
    assert cfg.solver.lr == 0.02  # mid
    assert cfg.model.backbone.name == "resnet18" and cfg.crf.mode == "meanfield"  # recipe
    assert cfg.data.train_scales == cpu.data.train_scales  # same section, key not overridden
    assert cfg.solver.steps == cpu.solver.steps and cfg.train.log_period == 7
    # a base's fractions of max_iter follow the child's max_iter
    (tmp_path / "short.yaml").write_text("_base_: discobox_r18_fpn_cpu\nsolver:\n  max_iter: 720\n")
    short = load_config(tmp_path / "short.yaml")
    assert short.solver.steps == (576, 672) and short.teacher.start_iter == 240


def test_base_cycle_and_bad_base_are_one_line_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nsolver:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "missing.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml: _base_: config 'nowhere.yaml'"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("_base_: [a.yaml]\n")
    with pytest.raises(ConfigError, match="'_base_' must be a recipe name or a YAML path"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="unknown config key '_base_'"):
        load_config(None, ["_base_=discobox_r18_fpn_cpu"])
