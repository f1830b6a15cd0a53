"""Schedules that follow ``solver.max_iter`` and the training json's categories as defaults
(config.py's module docstring states the schedule rule)."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_overrides

from discobox.config import Config, ConfigError, config_from_dict, load_config
from discobox.data.build import read_categories, resolve_dataset_defaults

SCHEDULE = ("solver.steps", "solver.warmup_iters", "teacher.start_iter", "loss.box_warmup_iters")
PAPER_RECIPES = ("discobox_r50_fpn_3x_coco", "discobox_r101_dcn_fpn_3x_coco",
                 "discobox_x101_dcn_fpn_3x_coco", "discobox_r50_fpn_6x_voc",
                 "discobox_r101_fpn_6x_voc")


def _schedule(cfg: Config) -> tuple:
    return (cfg.solver.max_iter, cfg.solver.steps, cfg.solver.warmup_iters,
            cfg.teacher.start_iter, cfg.loss.box_warmup_iters)


def test_cpu_recipe_at_its_own_max_iter_resolves_to_the_integers_it_had(tmp_path):
    cpu = load_config("discobox_r18_fpn_cpu")
    assert _schedule(cpu) == (3000, (2400, 2800), 200, 1000, 1000)
    # the same recipe written in iterations (as before the fractions) is the same config
    (tmp_path / "ints.yaml").write_text(
        "_base_: discobox_r18_fpn_cpu\nsolver:\n  steps: [2400, 2800]\n  warmup_iters: 200\n"
        "teacher:\n  start_iter: 1000\nloss:\n  box_warmup_iters: 1000\n")
    assert load_config(tmp_path / "ints.yaml") == cpu
    assert all(isinstance(v, int) for v in (*cpu.solver.steps, cpu.solver.warmup_iters,
                                              cpu.teacher.start_iter, cpu.loss.box_warmup_iters))
    assert config_from_dict(cpu.to_dict()) == cpu


@pytest.mark.parametrize("max_iter,expected", [
    (720, ((576, 672), 48, 240, 240)),
    (6000, ((4800, 5600), 400, 2000, 2000)),
    (1, ((1, 1), 0, 0, 0)),
])
def test_max_iter_alone_rescales_the_cpu_schedule(max_iter, expected):
    """steps 0.8 and 14/15, warm-up 1/15, teacher and box warm-up 1/3 of solver.max_iter,
    each rounded to the nearest iteration."""
    cfg = load_config("discobox_r18_fpn_cpu", [f"solver.max_iter={max_iter}"])
    assert _schedule(cfg) == (max_iter, *expected)
    assert cfg.loss.box_warmup_iters == cfg.teacher.start_iter  # the warm-up ends as it starts


def test_explicit_values_win_and_fractions_work_in_overrides():
    cfg = load_config("discobox_r18_fpn_cpu", ["solver.max_iter=720", "teacher.start_iter=100",
                                               "solver.steps=[0.5,700]"])
    assert _schedule(cfg) == (720, (360, 700), 48, 100, 240)
    cfg = load_config(None, ["solver.max_iter=1000", "loss.box_warmup_iters=0.25"])
    assert cfg.loss.box_warmup_iters == 250
    assert Config().replace(**{"solver.max_iter": 90, "teacher.start_iter": 0.5}) \
        .teacher.start_iter == 45


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_epoch_based_recipes_are_unaffected(name):
    cfg = load_config(name)
    assert cfg.solver.max_iter is None
    assert cfg.solver.warmup_iters == 2000 and cfg.teacher.start_iter == 13000
    assert cfg.solver.steps in ((33, 35), (54, 66))


def test_fractions_need_max_iter_and_a_fraction_is_in_0_1():
    with pytest.raises(ConfigError, match=r"'teacher.start_iter'=0.3 holds a fraction of "
                                          r"solver.max_iter, which is not set"):
        load_config(None, ["teacher.start_iter=0.3"])
    # a recipe with fractions whose max_iter is removed
    with pytest.raises(ConfigError, match="'solver.steps'=.* holds a fraction"):
        load_config("discobox_r18_fpn_cpu", ["solver.max_iter=null"])
    with pytest.raises(ConfigError, match="'solver.warmup_iters' must be a whole number of "
                                          r"iterations or a fraction in \(0, 1\)"):
        load_config(None, ["solver.max_iter=100", "solver.warmup_iters=1.5"])


def test_demo_config_is_unaffected(tmp_path):
    """The demo sets every schedule key in iterations itself."""
    from discobox.engine.demo import demo_config

    demo = demo_config(tmp_path, tmp_path / "out", iterations=423, seed=0, full=False,
                       class_names=("a", "b"))
    assert _schedule(demo) == (423, (338, 393), 52, 141, 141)


# ------------------------------------------------------------ the training json's categories
def _three_category_set(tiny_coco, tmp_path):
    """tiny_coco's train.json with 3 categories of ids [7, 3, 9] (listed in that order)."""
    data = json.loads((tiny_coco / "train.json").read_text())
    ids = [7, 3, 9]
    data["categories"] = [{"id": i, "name": n} for i, n in zip(ids, ("seven", "three", "nine"))]
    for k, ann in enumerate(data["annotations"]):
        ann["category_id"] = ids[k % 3]
    path = tmp_path / "three.json"
    path.write_text(json.dumps(data))
    return path


def test_training_json_sets_num_classes_names_and_ids(tiny_coco, tmp_path):
    """Labels follow the category ids ascending (CocoDataset): 3 -> 0, 7 -> 1, 9 -> 2; the
    recipe's 80 classes give way to the json's 3, and the checkpoint stores names and ids."""
    from discobox.checkpoint.io import find_last_checkpoint, load_checkpoint_file
    from discobox.checkpoint.load import load_model
    from discobox.engine.trainer import train

    train_json = _three_category_set(tiny_coco, tmp_path)
    items = [o for o in tiny_overrides(tiny_coco, tmp_path / "run", **{
        "data.train_json": str(train_json), "data.val_json": "null", "solver.max_iter": 2,
        "solver.steps": "[1]", "teacher.start_iter": 1}) if not o.startswith("model.num_classes")]
    cfg = load_config(None, items)
    assert cfg.model.num_classes == 80 and cfg.data.class_names is None
    train(cfg)
    assert "model.num_classes=80 -> 3" in (tmp_path / "run" / "log.txt").read_text()
    for path in (find_last_checkpoint(tmp_path / "run"), tmp_path / "run" / "model_final.pth"):
        stored = load_checkpoint_file(path)["config"]
        assert stored["model"]["num_classes"] == 3
        assert stored["data"]["class_names"] == ["three", "seven", "nine"]
        assert stored["data"]["category_ids"] == [3, 7, 9]
    model, loaded = load_model(tmp_path / "run" / "model_final.pth")
    assert loaded.data.category_ids == (3, 7, 9) and loaded.model.num_classes == 3
    assert load_config(tmp_path / "run" / "config.yaml").data.category_ids == (3, 7, 9)


def test_dataset_defaults_follow_given_class_names_and_keep_duplicate_names_unset(tmp_path):
    cats = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}, {"id": 9, "name": "c"}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    base = Config().replace(**{"data.train_json": str(path)})
    picked = resolve_dataset_defaults(base.replace(**{"data.class_names": ["c", "a"]}))
    assert picked.model.num_classes == 2 and picked.data.category_ids == (9, 3)
    assert picked.data.class_names == ("c", "a")
    # duplicate names: the dataset labels by id, so no names are filled in
    cats[2]["name"] = "a"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    dup = resolve_dataset_defaults(base)
    assert dup.data.class_names is None and dup.data.category_ids == (3, 7, 9)
    # categories the dataset refuses (a string id) leave the config as it is
    path.write_text(json.dumps({"categories": [{"id": "x", "name": "a"}]}))
    assert resolve_dataset_defaults(base) == base
    assert resolve_dataset_defaults(Config()) == Config()  # no train json


def test_read_categories_alone_and_from_the_whole_json(tmp_path):
    cats = [{"id": 1, "name": "x"}]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"images": [{"file_name": '"categories": [1]'}],
                               "categories": cats}))
    assert read_categories(one) == cats
    two = tmp_path / "two.json"  # a nested "categories" key: the whole json decides
    two.write_text(json.dumps({"info": {"categories": [5]}, "categories": cats}))
    assert read_categories(two) == cats
