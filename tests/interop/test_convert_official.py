"""Official checkpoint conversion (docs/method.md §9): key table, shapes, strictness, bad files."""

from __future__ import annotations

import pytest
import torch

from discobox.checkpoint.convert import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    expected_state_dict,
    infer_recipe,
    official_key_to_ours,
    official_to_ours,
)
from discobox.checkpoint.load import load_model
from discobox.cli.main import main
from discobox.config import load_config
from discobox.errors import DiscoboxError

# Grid sizes are not weights: small grids keep the 512-channel towers cheap on CPU.
SMALL_GRIDS = ["model.num_grids=[8,6,4,3,2]"]


def _forward_ok(model, size=(64, 64)) -> None:
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size) * 255)
    assert all(torch.isfinite(t).all() for t in (*out.cate_logits, *out.kernels, out.mask_feat))
    assert out.mask_feat.shape[-2:] == (size[0] // 4, size[1] // 4)


def test_r50_convert_then_load_strict(official_r50, tmp_path):
    src, state = official_r50
    dst = tmp_path / "ours.pth"
    report = convert_checkpoint(src, dst)
    assert report.ok and report.mapped == len(state)
    assert not report.renamed and not report.ignored and not report.defaulted
    ckpt = torch.load(dst, weights_only=False)
    assert set(ckpt) == {"model", "config", "source", "sha256"}
    assert len(ckpt["sha256"]) == 64 and ckpt["source"]["mmdet_version"] == "2.10.0"
    model, cfg = load_model(dst, overrides=SMALL_GRIDS)  # no config needed: it is stored
    assert cfg.model.backbone.name == "resnet50" and cfg.model.num_classes == 80
    ours = model.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value), key
    _forward_ok(model)


def test_r101_dcn_official_loads_directly(official_r101_dcn):
    src, state = official_r101_dcn
    # Official layout detected, converted on load, recipe inferred.
    model, cfg = load_model(src, overrides=SMALL_GRIDS)
    assert cfg.model.backbone.name == "resnet101" and cfg.model.backbone.dcn
    assert cfg.model.dcn_head
    ours = model.state_dict()
    assert set(ours) == set(state)
    for key in ("backbone.layer3.22.conv2.conv_offset.weight",
                "mask_feat_head.conv_pred.0.conv.conv_offset.weight",
                "bbox_head.kernel_convs.0.conv.conv_offset.bias", "bbox_head.solo_cate.bias"):
        assert torch.equal(ours[key], state[key]), key
    _forward_ok(model, (64, 96))


@pytest.mark.parametrize(
    ("kwargs", "recipe"),
    [
        ({"depth": 50}, "discobox_r50_fpn_3x_coco"),
        ({"depth": 50, "num_classes": 20}, "discobox_r50_fpn_6x_voc"),
        ({"depth": 101, "num_classes": 20}, "discobox_r101_fpn_6x_voc"),
        ({"depth": 101, "dcn": True}, "discobox_r101_dcn_fpn_3x_coco"),
        ({"depth": 101, "dcn": True, "groups": 64, "base_width": 4},
         "discobox_x101_dcn_fpn_3x_coco"),
    ],
)
def test_infer_recipe_and_shapes(make_official, kwargs, recipe):
    state = make_official(device="meta", **kwargs)
    assert infer_recipe(state) == recipe
    # Every official key and shape of §9 maps onto the model of that recipe, nothing missing.
    _, report = convert_state_dict(state, expected_state_dict(load_config(recipe)))
    assert report.ok and report.mapped == len(state), report.problems()


def test_no_recipe_for_r101_coco_without_dcn(make_official):
    with pytest.raises(ConversionError, match="no built-in recipe matches.*--config"):
        infer_recipe(make_official(depth=101, device="meta"))


def test_renamed_and_missing_keys_are_named(official_r50):
    _, state = official_r50
    bad = dict(state)
    bad["bbox_head.solo_kernel.weightt"] = bad.pop("bbox_head.solo_kernel.weight")
    del bad["neck.fpn_convs.2.conv.bias"]
    with pytest.raises(ConversionError) as err:
        official_to_ours({"state_dict": bad}, path="x.pth", config="discobox_r50_fpn_3x_coco")
    msg = str(err.value)
    assert "x.pth" in msg and "bbox_head.solo_kernel.weightt" in msg
    assert "missing: neck.fpn_convs.2.conv.bias, bbox_head.solo_kernel.weight" in msg
    converted, report = official_to_ours({"state_dict": bad}, path="x.pth", strict=False)
    assert report.unmapped == ["bbox_head.solo_kernel.weightt"]
    assert sorted(report.missing) == ["bbox_head.solo_kernel.weight", "neck.fpn_convs.2.conv.bias"]


def test_no_strict_writes_a_loadable_checkpoint(official_r50, tmp_path):
    _, state = official_r50
    bad = dict(state)
    del bad["bbox_head.solo_cate.weight"]
    src = tmp_path / "partial.pth"
    torch.save({"state_dict": bad, "meta": {}}, src)
    with pytest.raises(ConversionError, match="bbox_head.solo_cate.weight"):
        convert_checkpoint(src, tmp_path / "a.pth")
    report = convert_checkpoint(src, tmp_path / "b.pth", strict=False)
    assert report.missing == ["bbox_head.solo_cate.weight"]
    model, _ = load_model(tmp_path / "b.pth")
    assert torch.equal(model.state_dict()["bbox_head.solo_cate.bias"],
                       state["bbox_head.solo_cate.bias"])


def test_ignored_and_legacy_keys(official_r101_dcn):
    _, state = official_r101_dcn
    src = {}
    for key, value in state.items():
        if key == "backbone.layer2.0.conv2.conv_offset.weight":
            key = "backbone.layer2.0.conv2_offset.weight"  # mmdet 1.x
        elif key == "bbox_head.cate_convs.1.conv.conv_offset.bias":
            key = "bbox_head.cate_convs.1.conv.conv_offset_mask.bias"  # mmcv < 1.0
        src["module." + key] = value
    src["ema_backbone_conv1_weight"] = torch.zeros(1)
    src["teacher.neck.fpn_convs.0.conv.weight"] = torch.zeros(1)
    src["backbone.fc.weight"] = torch.zeros(1000, 2048)
    expected = expected_state_dict(load_config("discobox_r101_dcn_fpn_3x_coco"))
    out, report = convert_state_dict(src, expected)
    assert report.ok and report.mapped == len(state) == len(out)
    assert [k for k, _ in report.ignored] == [
        "ema_backbone_conv1_weight", "teacher.neck.fpn_convs.0.conv.weight", "backbone.fc.weight"]
    assert ("module.backbone.layer2.0.conv2_offset.weight",
            "backbone.layer2.0.conv2.conv_offset.weight") in report.renamed
    assert torch.equal(out["bbox_head.cate_convs.1.conv.conv_offset.bias"],
                       state["bbox_head.cate_convs.1.conv.conv_offset.bias"])
    assert official_key_to_ours("ema_bbox_head_solo_cate_bias")[0] is None
    assert official_key_to_ours("neck.fpn_convs.0.conv.weight") == (
        "neck.fpn_convs.0.conv.weight", "")


def test_missing_num_batches_tracked_is_defaulted(official_r50):
    _, state = official_r50
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = expected_state_dict(load_config("discobox_r50_fpn_3x_coco"))
    out, report = convert_state_dict(old, expected)
    assert report.ok and report.defaulted and all(
        k.endswith("num_batches_tracked") for k in report.defaulted)
    assert int(out["backbone.bn1.num_batches_tracked"]) == 0


def test_wrong_architecture_is_named(official_r50, tmp_path):
    src, state = official_r50
    # An R-50 checkpoint with the R-101 recipe: the missing layer3 blocks are named.
    with pytest.raises(ConversionError, match=r"missing: .*backbone\.layer3\.6\."):
        load_model(src, config="discobox_r101_fpn_6x_voc")
    # 80 classes into a 20-class recipe: shape mismatch with both shapes.
    with pytest.raises(ConversionError, match=r"bbox_head.solo_cate.weight \[80, 512, 3, 3\] vs "
                                              r"model \[20, 512, 3, 3\]"):
        convert_checkpoint(src, tmp_path / "x.pth", config="discobox_r50_fpn_6x_voc")
    # A Mask R-CNN checkpoint (mmdet layout, other architecture).
    mrcnn = {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}
    mrcnn["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)
    path = tmp_path / "mask_rcnn.pth"
    torch.save({"meta": {}, "state_dict": mrcnn}, path)
    with pytest.raises(ConversionError, match="not a DiscoBox/SOLOv2 checkpoint.*solo_cate"):
        load_model(path)
    with pytest.raises(ConversionError, match="roi_head.bbox_head.fc_cls.weight"):
        load_model(path, config="discobox_r50_fpn_3x_coco")


def test_truncated_file(official_r50, tmp_path):
    src, _ = official_r50
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(src.read_bytes()[:4096])
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*truncated.pth"):
        load_model(cut)
    with pytest.raises(RuntimeError, match="truncated.pth"):
        convert_checkpoint(cut, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(DiscoboxError, match="checkpoint not found: .*absent.pth"):
        convert_checkpoint(tmp_path / "absent.pth", tmp_path / "out.pth")


def test_cli_convert(official_r50, tmp_path, capsys):
    src, state = official_r50
    dst = tmp_path / "cli.pth"
    assert main(["convert", str(src), str(dst), "--config", "discobox_r50_fpn_3x_coco"]) == 0
    assert f"{len(state)} tensors mapped" in capsys.readouterr().out
    bad = dict(state)
    bad.pop("backbone.layer1.0.bn1.weight")
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    assert main(["convert", str(tmp_path / "bad.pth"), str(tmp_path / "o.pth")]) == 2
    assert "backbone.layer1.0.bn1.weight" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "bad.pth"), str(tmp_path / "o.pth"),
                 "--no-strict"]) == 0
    assert (tmp_path / "o.pth").exists()
