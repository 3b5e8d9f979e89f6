"""``sparsebench plan`` (runs, epochs, images and wall time from a throughput) and the image
folders' params, each bad value refused by ``check-params`` in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from sparsebench.data.example import write_image_folder
from sparsebench.pipeline.cli import main
from sparsebench.pipeline.cost import makespan


def _plan(capsys, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["plan", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_plan_counts_the_default_suites_runs_from_the_formulas(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no prepared file: the sizes come from the params
    lines = _plan(capsys, "--params", str(ROOT / "params.yaml"), "--images-per-second",
                  "50000", "--workers", "2")
    rows = {line.split()[0]: line.split() for line in lines[3:-1]}
    per_epoch = 55_000 + 5_000 / 3  # training split + a third of a validation pass
    assert rows["pretrain"][1:3] == ["5", "12"]
    assert rows["pretrain"][3] == f"{5 * 12 * per_epoch / 1e6:.2f}M"
    assert rows["magnitude"][1:3] == ["25", "12"]  # 5 levels x 5 seeds, 12 epochs each
    assert rows["admm_l1"][1:3] == ["25", "4-8"]  # 4 retrain a level, 8 shared prune a seed
    assert rows["grda"][1:3] == ["25", "24"]
    hours = float(rows["total"][-1])
    epochs = sum(int(r[1]) * int(r[2]) for k, r in rows.items()
                 if k != "total" and "-" not in r[2])
    assert hours > epochs * per_epoch / 50_000 / 3600  # and the shared prunes besides
    assert lines[1].startswith("throughput: 50,000 training images/s a run (given")
    assert re.match(r"wall time on 2 worker\(s\): \d+\.\d min", lines[-1])


def test_plan_measures_the_suites_model_here(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(dataset="synthetic", val_size=32, limit=64)
    raw["methods"] = {"magnitude": raw["methods"]["magnitude"]}
    raw["tune"]["spaces"] = {}
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    lines = _plan(capsys)
    rate = float(re.match(r"throughput: ([\d,]+) ", lines[1]).group(1).replace(",", ""))
    assert rate > 0 and "measured: 6 steps of batch 32 at 1x8x8" in lines[1]


def test_makespan_schedules_longest_first():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2
    assert makespan([5], 4) == 5


@pytest.mark.parametrize(("args", "message"), [
    (["--images-per-second", "0"], "--images-per-second: 0.0 is out of range; allowed: a "
                                   "number > 0"),
    (["--workers", "0"], "--workers: 0 is out of range; allowed: an integer >= 1"),
])
def test_plan_refuses_bad_arguments(args, message, capsys):
    assert main(["plan", "--params", str(ROOT / "params.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder") / "root", classes=2,
                              train_per_class=4, val_per_class=2)


@pytest.mark.parametrize(("change", "message"), [
    ({"crop": 300}, "data.crop: 300 is larger than data.resize 256; allowed: crop <= resize"),
    ({"loader_workers": -1}, "data.loader_workers: -1 is"),
    ({"dir": None}, "data.dir: null is not allowed for data.dataset imagefolder; allowed: "
                    "the folder holding train/ and val/"),
    ({"augment": "crop_flip"}, "data.augment: 'crop_flip' is not allowed for data.dataset "
                               "imagefolder; allowed: none"),
    ({"dir": "/nonexistent/images"}, "data.dir: '/nonexistent/images' is not a directory"),
])
def test_check_params_refuses_bad_image_folder_settings(change, message, images, tmp_path,
                                                         capsys):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"] = {"dataset": "imagefolder", "dir": str(images), "val_size": 2, **change}
    raw["model"] = {"name": "resnet20", "args": {}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
