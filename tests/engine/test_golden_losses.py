"""Golden loss values: a fixed-seed tiny run must give the same losses after any refactor.

Like detectron2's expected-loss tests: a refactor that changes a number (a loss term, the target
assignment, the teacher's switch-on, the CRF, the schedule) fails here. The values were recorded
on the code before the layout consolidation (issue 29) with one CPU thread; regenerate them only
for a deliberate change of the method, and say so in the commit:

    DISCOBOX_GOLDEN_PRINT=1 python -m pytest tests/engine/test_golden_losses.py -s
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import tiny_overrides

from discobox.config import load_config
from discobox.engine import trainer as trainer_mod

# Relative tolerance: the runs are deterministic on one thread; this leaves room for another
# BLAS or CPU family only.
RTOL = 1e-4

SETTINGS = {
    # the CPU recipe's box-mode losses: meanfield teacher, filled-box warm-up, sigmoid floor
    "box_meanfield": {
        "crf.mode": "meanfield",
        "loss.box_warmup_iters": 3,
        "loss.sigmoid_grad_floor": 0.01,
        "teacher.momentum": 0.99,
        "corr.enabled": "false",
    },
    # the paper recipes' box mode: faithful CRF teacher, the correspondence branch on
    "box_faithful_corr": {
        "crf.mode": "faithful",
        "corr.enabled": "true",
        "corr.min_box_size": 0,
        "corr.min_retrieval": 1,
        "corr.max_retrieval": 2,
        "corr.fg_iou_thresh": 0.0,
        "corr.bg_iou_thresh": 0.0,
        "corr.appear_thresh": -1.0,
        "corr.ratio_range": "[0.0, 100.0]",
    },
    # the fully supervised reference
    "full": {"loss.mode": "full"},
}

EXPECTED: dict[str, list[dict[str, float]]] = {
    "box_faithful_corr": [
        {
            "loss_cls": 0.9931837916374207,
            "loss_proj": 0.789072573184967,
            "loss_corr": 0.0,
            "loss_ts": 1.1792240142822266,
        },
        {
            "loss_cls": 1.0538582801818848,
            "loss_proj": 0.8139007687568665,
            "loss_corr": 3.8893985748291016,
            "loss_ts": 1.1421082019805908,
        },
        {
            "loss_cls": 0.9366262555122375,
            "loss_proj": 0.787187933921814,
            "loss_corr": 3.8894574642181396,
            "loss_ts": 1.351576805114746,
        },
        {
            "loss_cls": 1.0271556377410889,
            "loss_proj": 0.7358168363571167,
            "loss_corr": 3.889287233352661,
            "loss_ts": 1.2039399147033691,
        },
        {
            "loss_cls": 0.992577075958252,
            "loss_proj": 0.6251424551010132,
            "loss_corr": 3.888901710510254,
            "loss_ts": 0.8630977869033813,
        },
        {
            "loss_cls": 0.9056077599525452,
            "loss_proj": 0.7383280992507935,
            "loss_corr": 3.8889026641845703,
            "loss_ts": 0.6451755166053772,
        },
    ],
    "box_meanfield": [
        {
            "loss_cls": 0.9931837916374207,
            "loss_proj": 0.789072573184967,
            "loss_boxwarm": 0.6733756065368652,
            "loss_ts": 0.9925088286399841,
        },
        {
            "loss_cls": 1.0538668632507324,
            "loss_proj": 0.8134939074516296,
            "loss_boxwarm": 0.44949936866760254,
            "loss_ts": 0.7955232858657837,
        },
        {
            "loss_cls": 0.9372339844703674,
            "loss_proj": 0.7724946737289429,
            "loss_boxwarm": 0.22490686178207397,
            "loss_ts": 0.9334087371826172,
        },
        {
            "loss_cls": 1.0275472402572632,
            "loss_proj": 0.7146456241607666,
            "loss_boxwarm": 0.0,
            "loss_ts": 0.5332097411155701,
        },
        {
            "loss_cls": 0.994949221611023,
            "loss_proj": 0.649094820022583,
            "loss_boxwarm": 0.0,
            "loss_ts": 0.3381873071193695,
        },
        {
            "loss_cls": 0.9251471757888794,
            "loss_proj": 0.8287258744239807,
            "loss_boxwarm": 0.0,
            "loss_ts": 0.5395282506942749,
        },
    ],
    "full": [
        {"loss_cls": 1.0362783670425415, "loss_mask": 2.352283239364624},
        {"loss_cls": 1.0571304559707642, "loss_mask": 2.492152214050293},
        {"loss_cls": 0.9393479228019714, "loss_mask": 2.421868324279785},
        {"loss_cls": 1.028297781944275, "loss_mask": 1.954925775527954},
        {"loss_cls": 0.9853772521018982, "loss_mask": 1.6144859790802002},
        {"loss_cls": 0.9386754631996155, "loss_mask": 2.2825896739959717},
    ],
}


def _run(tiny_coco, tmp_path, name: str) -> list[dict[str, float]]:
    extra = {
        "solver.max_iter": 6,
        "solver.steps": "[5]",
        "teacher.start_iter": 2,
        "train.eval_period": 0,
        "data.val_json": "null",
        "train.checkpoint_period": 100,
        "train.seed": 3,
        **SETTINGS[name],
    }
    cfg = load_config(None, tiny_overrides(tiny_coco, tmp_path / name, **extra))
    trainer_mod.train(cfg)
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    return [
        {k[len("train/") :]: v for k, v in r.items() if k.startswith("train/loss_")}
        for r in records
        if "train/loss" in r
    ]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_losses_equal_the_recorded_run(tiny_coco, tmp_path, name):
    got = _run(tiny_coco, tmp_path, name)
    if os.environ.get("DISCOBOX_GOLDEN_PRINT"):
        print(f"\n{name!r}: {json.dumps(got)},")
        return
    want = EXPECTED[name]
    assert len(got) == len(want) == 6
    for i, (g, w) in enumerate(zip(got, want)):
        assert sorted(g) == sorted(w), f"iteration {i + 1}: loss keys {sorted(g)} != {sorted(w)}"
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=RTOL, abs=1e-7), (
                f"{name}, iteration {i + 1}, {key}: {g[key]!r} != recorded {w[key]!r}"
            )
