"""``sparsebench export`` and ``sparsebench inspect``: output, files and exit codes."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.utils import prune

from sparsebench import checkpoint
from sparsebench.core.metrics import prunable_modules
from sparsebench.core.models import build_model
from sparsebench.core.sparsity import apply_masks, magnitude_masks, make_permanent
from sparsebench.pipeline import cli
from sparsebench.pipeline.cli import main


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet5", image_size=16)
    apply_masks(model, magnitude_masks(model, 0.95))
    make_permanent(model)
    return model


@pytest.fixture
def dense_file(tmp_path, model) -> Path:
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(model, path)
    return path


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_inspect_prints_layers_totals_and_ratio(tmp_path, model, capsys):
    path = tmp_path / "m.safetensors"
    checkpoint.save(model, path)
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "shape", "nonzeros", "density", "encoding", "bytes"]
    fc1 = next(line.split() for line in lines if line.startswith("fc1.weight"))
    nonzeros = int(model.fc1.weight.count_nonzero())
    encoding = checkpoint.encode(model.fc1.weight).encoding
    assert fc1[:5] == ["fc1.weight", "500x50", str(nonzeros), f"{nonzeros / 25000:.4f}", encoding]
    assert any(line.startswith("(4 other tensors)") for line in lines)
    size = path.stat().st_size
    assert lines[-2].split()[0] == "total" and lines[-2].split()[-1] == str(size)
    dense = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert lines[-1] == (f"file {size} bytes, dense size {dense} bytes: ratio {size / dense:.4f} "
                         f"(compression {dense / size:.1f}x)")


def test_export_round_trips_dense_and_compressed(tmp_path, dense_file, capsys):
    small, back = tmp_path / "small.safetensors", tmp_path / "back.safetensors"
    assert main(["export", str(dense_file), str(small), "--to", "compressed"]) == 0
    assert main(["export", str(small), str(back), "--to", "dense"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{small}: written (compressed)",
                                                    f"{back}: written (dense)"]
    assert small.stat().st_size < dense_file.stat().st_size / 5
    original = checkpoint.load_model(dense_file)[0].state_dict()
    assert _same_state(checkpoint.load(small).state_dict(), original)
    assert _same_state(load_file(back), load_file(dense_file))  # a plain state_dict
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.safetensors", "model.safetensors",
                                                          "small.safetensors"]  # no .tmp left


def test_export_prune_form_loads_with_custom_from_mask(tmp_path, model, dense_file):
    out = tmp_path / "pruned.safetensors"
    assert main(["export", str(dense_file), str(out), "--to", "prune"]) == 0
    state = load_file(out)
    with safe_open(str(out), framework="pt") as f:
        arch = json.loads(f.metadata()["arch"])
    user_model = build_model(arch["name"], **arch["args"])
    for name, module in prunable_modules(user_model):
        prune.custom_from_mask(module, "weight", state[f"{name}.weight_mask"])
    user_model.load_state_dict(state)  # strict: weight_orig and weight_mask for every layer
    for name, module in prunable_modules(user_model):
        effective = module.weight_orig * module.weight_mask  # what the forward hook computes
        assert torch.equal(effective, model.get_submodule(name).weight)
        assert torch.equal(module.weight_mask.bool(), model.get_submodule(name).weight != 0)


def test_export_refuses_an_unknown_form(tmp_path, dense_file, capsys):
    assert main(["export", str(dense_file), str(tmp_path / "o"), "--to", "zip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--to: invalid choice: 'zip'" in err
    assert not (tmp_path / "o").exists()


def test_export_of_a_bad_input_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["export", str(bad), str(tmp_path / "o"), "--to", "dense"]) == 2
    assert capsys.readouterr().err.startswith("sparsebench: error: model file: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_export_choices_are_the_library_forms():
    assert cli.EXPORT_TO == checkpoint.EXPORT_FORMATS


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_exit_codes_and_one_line_errors_in_a_subprocess(tmp_path, model):
    """Run in a directory without params.yaml: the file tools need none."""
    good, evil = tmp_path / "good.safetensors", tmp_path / "evil.safetensors"
    checkpoint.save(model, good)
    evil.write_bytes(pickle.dumps(_Touch(tmp_path / "marker")))
    runs = [
        subprocess.Popen([sys.executable, "-m", "sparsebench", "inspect", str(path)],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for path in (good, evil)
    ]  # both at once: each pays the torch import
    (ok_out, ok_err), (bad_out, bad_err) = (run.communicate(timeout=120) for run in runs)
    assert runs[0].returncode == 0 and ok_err == "" and "ratio" in ok_out
    assert runs[1].returncode == 2 and bad_out == ""
    assert bad_err.startswith(f"sparsebench: error: model file: {str(evil)!r} is not a readable")
    assert bad_err.count("\n") == 1 and "Traceback" not in bad_err
    assert not (tmp_path / "marker").exists()
