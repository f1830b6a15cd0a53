"""The bad-input corpus through ``discobox pseudo-label`` (the corpus' json and image kinds as a
boxes json, plus output-path and argument kinds) and ``discobox predict`` (broken input files).

Same contract as test_bad_inputs.py: exit 2 with one stderr line naming the file (no
traceback), or success whose stdout summary counts the skip, or success. The outcomes feed
the table of test_zz_table.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from corpus import OUTCOMES, Built, Expect, build_case, cases, expected

from discobox.cli.main import main

CORPUS = cases()


def _cli(argv: list[str]) -> tuple[int | str, str, str]:
    """``(exit status or "traceback", stdout, stderr)`` of ``discobox ARGV``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc: int | str = main(argv)
        except Exception as exc:  # a bug: the CLI would show a traceback
            return "traceback", out.getvalue(), f"{type(exc).__name__}: {exc}"
    return rc, out.getvalue(), err.getvalue()


def _judge(verb: str, rc: int | str, stdout: str, stderr: str, named: str, expect: Expect,
           wrote: Path) -> tuple[str, str]:
    """The observed outcome (error / skip / ok / traceback / garbage) and its evidence."""
    if rc == "traceback" or "Traceback" in stderr or rc not in (0, 2):
        return "traceback", f"rc={rc} {stderr}"
    if rc == 2:
        lines = [ln for ln in stderr.splitlines() if ln.startswith(f"discobox {verb}: error: ")]
        clear = len(lines) == 1 and named in lines[0] and expect.match in lines[0]
        return ("error" if expect.outcome == "error" and clear else "garbage"), stderr
    if not wrote.is_file():
        return "garbage", f"exit 0 without {wrote}: {stdout}"
    if expect.outcome == "skip":
        return ("skip" if expect.match in stdout else "garbage"), stdout
    return ("ok" if expect.outcome == "ok" else "garbage"), stdout


# --------------------------------------------------------------------------------- pseudo-label
PL_SPECIFIC = ("out_is_directory", "out_under_a_file", "model_without_weights")


def _pl_argv(name: str, built: Built, weights: Path, out: Path) -> tuple[list[str], str]:
    argv = ["pseudo-label", "--weights", str(weights), "--boxes", str(built.json_path),
            "--images", str(built.image_dir), "--out", str(out), "--device", "cpu",
            "--no-progress"]
    return argv, built.named


def _pl_specific(name: str, base: Path, images: Path, tmp: Path, weights: Path):
    """``(argv, named, expect, out)`` of a pseudo-label-only case."""
    out = tmp / "out.json"
    argv = ["pseudo-label", "--boxes", str(base), "--images", str(images), "--device", "cpu",
            "--no-progress"]
    if name == "out_is_directory":
        out.mkdir()
        return [*argv, "--weights", str(weights), "--out", str(out)], str(out), \
            Expect("error", "output file is a directory"), out / "never"
    if name == "out_under_a_file":
        (tmp / "afile").write_text("x")
        out = tmp / "afile" / "sub" / "out.json"
        return [*argv, "--weights", str(weights), "--out", str(out)], str(tmp / "afile"), \
            Expect("error", "output directory is not writable"), out
    return [*argv, "--out", str(out)], "--weights", Expect("error", "needs --weights"), out


@pytest.mark.parametrize("name", [*[c.name for c in CORPUS], *PL_SPECIFIC])
def test_pseudo_label_verb(name, tiny_coco, tiny_weights, tmp_path):
    base, images = tiny_coco / "val.json", tiny_coco / "images"
    if name in PL_SPECIFIC:
        argv, named, expect, out = _pl_specific(name, base, images, tmp_path, tiny_weights)
    else:
        case = next(c for c in CORPUS if c.name == name)
        built = build_case(case, tmp_path / "case", base, images)
        out = tmp_path / "labelled.json"
        argv, named = _pl_argv(name, built, tiny_weights, out)
        expect = expected(case, "pseudo_label")
    rc, stdout, stderr = _cli(argv)
    outcome, detail = _judge("pseudo-label", rc, stdout, stderr, named, expect, out)
    OUTCOMES[name, "pseudo_label"] = outcome
    assert outcome == expect.outcome, f"{name}/pseudo-label: {outcome} ({expect}): {detail}"


# -------------------------------------------------------------------------------------- predict
def _good(folder: Path, images: Path, n: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder)) for p in sorted(images.glob("*.png"))[:n]]


def _predict_case(name: str, tmp: Path, images: Path) -> tuple[list[str], str, Expect]:
    """``(inputs, named, expect)``: a folder with one good image and one broken file, etc."""
    folder = tmp / "in"
    one_skip = Expect("skip", "skipped 1 files")
    if name == "missing_path":
        return [str(tmp / "nope.png")], str(tmp / "nope.png"), Expect("error", "not found")
    if name == "only_non_images":
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        (folder / "table.csv").write_text("a,b\n1,2\n")
        return [str(folder)], str(folder), Expect("skip", "skipped 2 files")
    _good(folder, images)
    broken = {"zero_bytes": ("z.png", b""), "not_an_image": ("t.png", b"hello"),
              "fake_video": ("v.mp4", b"not a video at all"),
              "truncated": ("c.png", (folder / next(iter(sorted(p.name for p in
                                                         folder.iterdir())))).read_bytes()[:60])}
    if name in broken:
        fname, data = broken[name]
        (folder / fname).write_bytes(data)
        return [str(folder)], str(folder / fname), one_skip
    if name == "same_stem_png_jpg":  # x.png and x.jpg: two overlays
        src = next(folder.iterdir())
        shutil.copy(src, folder / "x.png")
        shutil.copy(src, folder / "x.jpg")
        return [str(folder)], "", Expect("ok")
    raise KeyError(name)


PREDICT_CASES = ("zero_bytes", "truncated", "not_an_image", "only_non_images", "missing_path",
                 "fake_video", "same_stem_png_jpg")


@pytest.mark.parametrize("name", PREDICT_CASES)
def test_predict_verb(name, tiny_coco, tiny_weights, tmp_path):
    inputs, named, expect = _predict_case(name, tmp_path, tiny_coco / "images")
    out = tmp_path / "pred"
    rc, stdout, stderr = _cli(["predict", *inputs, "--weights", str(tiny_weights), "--output",
                               str(out), "--device", "cpu", "--no-progress"])
    outcome, detail = _judge("predict", rc, stdout, stderr, named, expect,
                             out / "predictions.json")
    if outcome == "ok" and name == "same_stem_png_jpg":
        overlays = {p.name for p in out.glob("x*.png")}
        outcome = "ok" if overlays == {"x_png.png", "x_jpg.png"} else "garbage"
        detail = str(overlays)
    if outcome in ("ok", "skip"):
        json.loads((out / "predictions.json").read_text())
    OUTCOMES[f"predict_{name}", "predict"] = outcome
    assert outcome == expect.outcome, f"{name}/predict: {outcome} ({expect}): {detail}"
