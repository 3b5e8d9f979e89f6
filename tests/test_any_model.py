"""Any model (issue 33, item 2): torchvision's classification models, a user's own builder
(``<module>:<callable>``), layers kept dense (``model.exclude``), layers whose weights bypass
their module's forward, pretrained weights from a local file (``model.weights``), and every
method on a batch-norm model. Each bad input is refused in one line naming the key."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import small_params
from safetensors.torch import save_file
from torch import nn

from sparsebench.checkpoint import load, load_model, save, save_model
from sparsebench.core.external import model_files, source_files
from sparsebench.core.levels import layer_targets
from sparsebench.core.metrics import count_flops, prunable_modules, sparsity_summary
from sparsebench.core.models import build_model
from sparsebench.core.schema import OptimizerParams, PhaseParams
from sparsebench.core.sparsity import apply_masks, get_masks, magnitude_masks
from sparsebench.data import synthetic_splits
from sparsebench.methods import METHODS, method_class, method_params
from sparsebench.pipeline.cache import fingerprint
from sparsebench.pipeline.pretrain import pretrain_config, pretrain_inputs
from sparsebench.run import ModelSpec, RunSpec, run, save_run_model
from sparsebench.suite.load import load_params
from sparsebench.suite.plan import input_files, level_layers
from sparsebench.util.errors import UsageError

META = torch.device("meta")
SHAPE = (3, 16, 16)
#: a batch-norm model small enough for every method in seconds on two cores (346K parameters;
#: ResNet-18's 11M take ten times as long); ``conv1`` is a module holding the first conv
SHUFFLENET = ModelSpec("torchvision:shufflenet_v2_x0_5", {}, 3, 16, 4, exclude=("conv1", "fc"))

MY_NET = """
from torch import nn

def build(num_classes, in_channels=1, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))

def attention(num_classes):
    return Attention(num_classes)

class Attention(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        t = self.embed(x.flatten(2).transpose(1, 2))
        return self.head(self.attn(t, t, t)[0].mean(1))

def no_classes(width=8):
    return nn.Linear(width, 2)

def not_a_module(num_classes):
    return [num_classes]

def raises(num_classes):
    raise ValueError("width must be even\\nsecond line")

VALUE = 3
"""


@pytest.fixture
def suite_dir(tmp_path, monkeypatch) -> Path:
    """A suite's directory, the working directory, holding ``models/my_net.py``."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "my_net.py").write_text(MY_NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(message: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as caught:
        fn(*args, **kwargs)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(message), text
    return text


# --------------------------------------------------------------------------------------------
# torchvision:<name>
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "alexnet", "vgg16_bn",
                                  "mobilenet_v3_large"])
def test_torchvision_models_take_the_data_classes(name):
    with META:
        model = ModelSpec(f"torchvision:{name}", {}, 3, 32, 7).build()
    last = [m for _, m in prunable_modules(model)][-1]
    assert last.out_features == 7
    assert model.arch == {"name": f"torchvision:{name}",
                          "args": {"in_channels": 3, "image_size": 32, "num_classes": 7}}


def test_torchvision_model_args_reach_the_builder():
    with META:
        model = build_model("torchvision:mobilenet_v3_small", num_classes=3, dropout=0.5)
    assert model.classifier[2].p == 0.5


def test_torchvision_model_rebuilds_from_its_files(tmp_path, one_thread):
    model = SHUFFLENET.build().eval()
    x = torch.randn(2, *SHAPE)
    save(model, tmp_path / "m.sparse.safetensors", compress=False)
    save_model(model, tmp_path / "m.safetensors")
    assert torch.equal(model(x), load(tmp_path / "m.sparse.safetensors").eval()(x))
    assert torch.equal(model(x), load_model(tmp_path / "m.safetensors")[0].eval()(x))


def test_an_unknown_torchvision_name_gives_the_close_names():
    text = _refused("model.name: 'torchvision:resnet5O' is not a torchvision classification "
                    "model; did you mean torchvision:resnet50", build_model,
                    "torchvision:resnet5O")
    assert "list_models(module=torchvision.models)" in text


def test_torchvision_refuses_images_that_are_not_rgb():
    _refused("model.name: torchvision:resnet18 takes 3-channel images, and the data have 1;",
             build_model, "torchvision:resnet18", in_channels=1, num_classes=3)


@pytest.mark.parametrize("key", ["weights", "progress"])
def test_torchvision_never_downloads(key):
    _refused(f"model.args.{key}: not allowed for torchvision:resnet18, which is built with "
             "weights=None", build_model, "torchvision:resnet18", **{key: "DEFAULT"})


def test_torchvision_refuses_an_argument_its_model_does_not_take():
    _refused("model.args: {'depth': 3} cannot build torchvision:resnet18 (TypeError:",
             build_model, "torchvision:resnet18", depth=3)


# --------------------------------------------------------------------------------------------
# <module>:<callable>
# --------------------------------------------------------------------------------------------


def test_a_file_builder_gets_the_data_shape_and_its_args(suite_dir):
    model = ModelSpec("models/my_net.py:build", {"width": 5}, 3, 16, 4).build()
    assert model[0].in_channels == 3 and model[0].out_channels == 5
    assert model[-1].out_features == 4
    assert model.arch["name"] == "models/my_net.py:build"
    assert model(torch.randn(2, *SHAPE)).shape == (2, 4)


def test_a_module_builder_is_imported_from_the_suite_directory(suite_dir):
    (suite_dir / "my_models.py").write_text("from torch import nn\n\ndef build(num_classes):\n"
                                            "    return nn.Linear(4, num_classes)\n")
    model = build_model("my_models:build", in_channels=1, image_size=2, num_classes=3)
    assert model.out_features == 3  # in_channels and image_size: not in its signature
    assert source_files("my_models:build") == [Path("my_models.py")]


def test_a_user_model_rebuilds_from_its_file_only_when_trusted(suite_dir):
    model = ModelSpec("models/my_net.py:build", {}, 3, 16, 4).build()
    save_model(model, suite_dir / "m.safetensors")
    _refused("model file: 'm.safetensors': arch.name: 'models/my_net.py:build' would import "
             "and run code of module models/my_net.py", load_model, "m.safetensors")
    again, _ = load_model("m.safetensors", trust_code=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values(), strict=True))


@pytest.mark.parametrize(("name", "message"), [
    ("nowhere:build", "model.name: 'nowhere:build': module nowhere does not import "
     "(ModuleNotFoundError: No module named 'nowhere');"),
    ("models/none.py:build", "model.name: 'models/none.py:build': module models/none.py does not "
     "import (FileNotFoundError: "),
    ("models/my_net.py:buidl", "model.name: 'models/my_net.py:buidl': module models/my_net.py "
     "has no attribute 'buidl'; allowed: a callable of it: build,"),
    ("models/my_net.py:VALUE", "model.name: 'models/my_net.py:VALUE': module models/my_net.py "
     "has a non-callable 'VALUE'"),
    ("models/my_net.py:not_a_module", "model.name: 'models/my_net.py:not_a_module' returned "
     "'list', not an nn.Module"),
    ("models/my_net.py:no_classes", "model.name: 'models/my_net.py:no_classes' takes no "
     "num_classes argument"),
    ("models/my_net.py:raises", "model.name: 'models/my_net.py:raises' raised ValueError: width "
     "must be even;"),
    ("my net:build", "model.name: 'my net:build' is not a model name; allowed: a zoo name, "
     "torchvision:<name>, or <module>:<callable>"),
])
def test_a_bad_user_builder_is_refused_in_one_line(suite_dir, name, message):
    _refused(message, build_model, name, num_classes=3)


def test_a_user_builder_that_does_not_import_names_the_first_line(suite_dir):
    (suite_dir / "models" / "broken.py").write_text("import torch\n\ndef build(:\n")
    _refused("model.name: 'models/broken.py:build': module models/broken.py does not import "
             "(SyntaxError: ", build_model, "models/broken.py:build", num_classes=3)


def test_an_unknown_argument_of_a_user_builder_names_the_close_one(suite_dir):
    _refused("model.args.wdth: unknown argument of models/my_net.py:build; did you mean width? "
             "allowed: num_classes, in_channels, width", build_model, "models/my_net.py:build",
             num_classes=3, wdth=4)


def test_editing_the_builder_changes_the_fingerprints(suite_dir):
    spec = RunSpec("magnitude", method_params("magnitude", {}), 4.0, 0,
                   PhaseParams(epochs=1, batch_size=8),
                   ModelSpec("models/my_net.py:build", {}, 3, 16, 4))
    assert Path("models/my_net.py") in input_files(spec)

    def keys():
        params = SimpleNamespace(model=SimpleNamespace(name=spec.model.name, weights=None))
        return (fingerprint(stage="run", config=spec.config(), inputs=input_files(spec)),
                fingerprint(stage="pretrain", config={}, inputs=pretrain_inputs(params)))

    before = keys()
    assert keys() == before
    with Path("models/my_net.py").open("a") as file:
        file.write("\n# tuned\n")
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]


def test_a_zoo_or_torchvision_model_has_no_source_file():
    assert model_files("mlp", None) == model_files("torchvision:resnet18", None) == []


def test_the_pretrain_key_of_a_suite_without_the_new_keys_is_unchanged(tmp_path):
    params, _ = load_params(small_params(tmp_path, tracking={"enabled": False}))
    assert pretrain_config(params, 1)["model"] == {"name": params.model.name,
                                                   "args": params.model.args}


# --------------------------------------------------------------------------------------------
# model.exclude
# --------------------------------------------------------------------------------------------


def test_excluded_layers_are_not_prunable_and_count_as_dense():
    model = build_model("mlp", widths=[6], in_channels=1, image_size=2, num_classes=3,
                        exclude=["layers.1"])
    assert [n for n, _ in prunable_modules(model)] == ["layers.3"]
    apply_masks(model, magnitude_masks(model, 0.5))
    assert set(get_masks(model)) == {"layers.3"}
    summary = sparsity_summary(model)
    assert summary["numel"] == 18 and summary["sparsity"] == 0.5
    assert count_flops(model, (1, 2, 2))["flops"] == 4 * 6 + 6 * 3  # the dense layer runs


def test_a_module_name_excludes_the_layers_it_holds():
    with META:
        model = build_model("resnet20", exclude=["layer1"])
    names = [n for n, _ in prunable_modules(model)]
    assert "conv1" in names and not any(n.startswith("layer1.") for n in names)


def test_an_unknown_excluded_layer_lists_the_layers_close_first():
    with META:
        text = _refused("model.exclude: 'fc1' is not a prunable layer of torchvision:resnet18; "
                        "allowed: fc, ", build_model, "torchvision:resnet18", exclude=["fc1"])
    assert "conv1" in text and "layer4.1.conv2" in text


def test_excluding_every_layer_is_refused():
    _refused("model.exclude: ['layers'] leaves mlp no prunable layer", build_model, "mlp",
             exclude=["layers"])


def test_the_level_leaves_the_excluded_layers_out_and_their_classifier_floor():
    sizes = {"conv1": 100, "conv2": 400, "fc": 50}
    params = SimpleNamespace(model=SimpleNamespace(exclude=["conv1", "fc"]),
                             levels=SimpleNamespace(classifier_density=0.1))
    kept, floor = level_layers(params, sizes)
    assert kept == {"conv2": 400} and floor == 0.0
    params.model.exclude = ["conv1"]
    assert level_layers(params, sizes) == ({"conv2": 400, "fc": 50}, 0.1)


def test_an_excluded_layer_is_stored_dense_in_the_checkpoint(tmp_path):
    model = build_model("mlp", widths=[6], in_channels=1, image_size=2, num_classes=3,
                        exclude=["layers.1"])
    apply_masks(model, magnitude_masks(model, 0.5))
    save(model, tmp_path / "m.sparse.safetensors")
    again = load(tmp_path / "m.sparse.safetensors")
    assert again.arch["exclude"] == ["layers.1"]
    assert [n for n, _ in prunable_modules(again)] == ["layers.3"]


# --------------------------------------------------------------------------------------------
# Layers whose weights bypass their module's forward
# --------------------------------------------------------------------------------------------


def test_a_vit_is_refused_naming_its_attention_layer():
    with META:
        _refused("model.name: torchvision:vit_b_16 has layer "
                 "'encoder.layers.encoder_layer_0.self_attention' (MultiheadAttention) whose "
                 "weights bypass their module's forward", build_model, "torchvision:vit_b_16")


def test_an_attention_layer_is_accepted_once_excluded(suite_dir):
    _refused("model.name: models/my_net.py:attention has layer 'attn' (MultiheadAttention)",
             build_model, "models/my_net.py:attention", num_classes=3)
    model = build_model("models/my_net.py:attention", num_classes=3, exclude=["attn"])
    assert [n for n, _ in prunable_modules(model)] == ["embed", "head"]


def test_a_mask_on_an_attention_output_would_not_apply():
    """Why it is refused: nn.MultiheadAttention reads out_proj.weight itself, so the masking
    pre-hook on out_proj never runs and training reads a stale weight."""
    attn = nn.MultiheadAttention(4, 1, batch_first=True)
    x = torch.randn(1, 3, 4)
    apply_masks(attn, {"out_proj": torch.zeros(4, 4, dtype=torch.bool)})
    attn.train()
    out = attn(x, x, x)[0]
    assert out.sum().backward() is None
    assert attn.out_proj.weight_orig.grad is None  # no gradient reached the masked layer


# --------------------------------------------------------------------------------------------
# model.weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_from_a_local_file_replace_the_initialisation(tmp_path, suffix):
    source = build_model("mlp", widths=[6], in_channels=1, image_size=2, num_classes=3)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, path)
    model = ModelSpec("mlp", {"widths": [6]}, 1, 2, 3, weights=str(path)).build()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_weights_of_another_architecture_name_the_first_mismatch(tmp_path):
    torch.save(build_model("mlp", widths=[7], in_channels=1, image_size=2,
                           num_classes=3).state_dict(), tmp_path / "w.pt")
    spec = ModelSpec("mlp", {"widths": [6]}, 1, 2, 3, weights=str(tmp_path / "w.pt"))
    _refused(f"model.weights: '{tmp_path / 'w.pt'}' does not fit mlp: key 'layers.1.weight' has "
             "shape (7, 4), the model's (6, 4);", spec.build)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "w.pt")
    _refused(f"model.weights: '{tmp_path / 'w.pt'}' does not fit mlp: missing key "
             "'layers.1.weight';", spec.build)


def test_missing_weights_are_refused(tmp_path):
    spec = ModelSpec("mlp", {}, 1, 2, 3, weights=str(tmp_path / "none.pt"))
    _refused(f"model.weights: '{tmp_path / 'none.pt'}' does not exist;", spec.build)


def test_the_weights_bytes_key_the_runs(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build_model("mlp", widths=[6], in_channels=1, image_size=2,
                           num_classes=3).state_dict(), path)
    spec = ModelSpec("mlp", {"widths": [6]}, 1, 2, 3, weights=str(path))
    before = fingerprint(stage="run", config={}, inputs=model_files(spec.name, spec.weights))
    torch.save({k: v + 1 for k, v in torch.load(path).items()}, path)
    assert fingerprint(stage="run", config={}, inputs=spec.files()) != before


# --------------------------------------------------------------------------------------------
# check-params
# --------------------------------------------------------------------------------------------


def _suite(tmp_path: Path, **model) -> Path:
    path = small_params(tmp_path, tracking={"enabled": False})
    params = yaml.safe_load(path.read_text())
    params["data"]["synthetic_shape"] = list(SHAPE)
    params["model"] = model
    path.write_text(yaml.safe_dump(params))
    return path


def test_check_params_accepts_a_torchvision_model_with_excluded_layers(tmp_path):
    params, _ = load_params(_suite(tmp_path, name="torchvision:resnet18",
                                   exclude=["conv1", "fc"]))
    assert params.model.exclude == ["conv1", "fc"]


@pytest.mark.parametrize(("model", "message"), [
    ({"name": "torchvision:resnet5O"}, "model.name: 'torchvision:resnet5O' is not a torchvision "
     "classification model; did you mean torchvision:resnet50"),
    ({"name": "torchvision:resnet18", "exclude": ["fc1"]}, "model.exclude: 'fc1' is not a "
     "prunable layer of torchvision:resnet18; allowed: fc,"),
    ({"name": "models/my_net.py:nope"}, "model.name: 'models/my_net.py:nope': module "
     "models/my_net.py has no attribute 'nope'"),
    ({"name": "torchvision:resnet18", "weights": "w.pt"}, "model.weights: 'w.pt' does not "
     "exist;"),
])
def test_check_params_refuses_a_bad_model_in_one_line(suite_dir, model, message):
    _refused(message, load_params, _suite(suite_dir, **model))


def test_check_params_refuses_weights_for_another_model(suite_dir):
    with META:
        torch.save(build_model("torchvision:resnet18", num_classes=10).state_dict(), "w.pt")
    _refused("model.weights: 'w.pt' does not fit torchvision:resnet18: key 'fc.weight' has "
             "shape (10, 512), the model's (4, 512);", load_params,
             _suite(suite_dir, name="torchvision:resnet18", weights="w.pt"))


# --------------------------------------------------------------------------------------------
# Every method on a batch-norm model (torchvision's ShuffleNetV2, 3x16x16, conv1 and fc dense)
# --------------------------------------------------------------------------------------------

LEVEL = 4.0  # compression over the prunable weights: sparsity 0.75
TINY = {  # one epoch of one 16-sample batch (two SAS-ADMM iterations of one minibatch)
    "gmp": {"epochs": 1, "end_epoch": 1, "frequency": 1},
    "admm": {"iterations": 1}, "admm_l1": {"iterations": 1},
    "sas_admm": {"iterations": 2, "M": 1, "k0": 1, "last": 1},
    **{m: {"epochs": 1} for m in ("grda", "linbreg", "adabreg", "proxsgd")},
    "linbreg_momentum": {"method": "linbreg", "epochs": 1, "momentum": 0.9,
                         "init_density": 0.5},  # the Bregman sparse init on batch norm
}
CASES = sorted({*METHODS, "linbreg_momentum"})


@pytest.fixture
def one_thread():
    """One torch thread, as a run of the pipeline (``execution.threads``): tiny ops on a busy
    machine spin the second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bn_setup(tmp_path_factory):
    splits = synthetic_splits(n_train=16, n_val=16, n_test=16, shape=SHAPE, num_classes=4)
    data = {s: ((splits[f"{s}_x"].float() / 255 - 0.5) / 0.25, splits[f"{s}_y"])
            for s in ("train", "val")}
    torch.manual_seed(0)
    pretrained = tmp_path_factory.mktemp("pretrained")
    save_run_model(pretrained, SHUFFLENET.build(), [])
    with META:
        sizes = {n: m.weight.numel() for n, m in prunable_modules(SHUFFLENET.build())}
    return data, pretrained, layer_targets(sizes, LEVEL, classifier_density=0.1)


@pytest.mark.parametrize("key", CASES)
def test_every_method_prunes_a_batch_norm_model(key, bn_setup, one_thread):
    data, pretrained, targets = bn_setup
    cfg = dict(TINY.get(key, {}))
    cls = method_class(key, cfg)
    if "batch_size" in cls.Params.model_fields:
        cfg["batch_size"] = 16
    if cls.kind() == "target":
        cfg.update(target_sparsity=1 - 1 / LEVEL, layer_sparsity=targets)
    spec = RunSpec(key, method_params(key, cfg), LEVEL, 0,
                   PhaseParams(epochs=1, batch_size=16, optimizer=OptimizerParams(lr=0.01)),
                   SHUFFLENET, pretrained)
    model = run(spec, data, torch.device("cpu")).model
    masks = get_masks(model)
    assert not {"conv1.0", "fc"} & set(masks)
    assert not hasattr(model.conv1[0], "weight_mask") and bool((model.fc.weight != 0).all())
    for layer, mask in masks.items():
        assert (model.get_submodule(layer).weight[~mask] == 0).all()
    if cls.kind() == "target":
        assert sparsity_summary(model)["compression"] == pytest.approx(LEVEL, rel=0.01)
    elif cls.kind() == "reference":
        assert masks == {}
