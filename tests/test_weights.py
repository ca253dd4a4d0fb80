"""timm-shaped models and weights: create_model(checkpoint_path=...) with .safetensors written
by the safetensors package from timm's reference state dicts (tests/fixtures, made by tools/),
list_models wildcards, CIFAR class-count defaults, reset_classifier / get_classifier /
no_weight_decay, and the one-line errors."""
import json

import numpy as np
import pytest

import minivit
from minivit import nn, optim
from minivit.checkpoint import CheckpointError
from minivit.models import create_model, list_models
from minivit.weights import load_state_dict_file, read_metadata, save_state_dict_file
from model_checks import assert_logits_match, eval_logits, fixture_state, load_fixture

st_numpy = pytest.importorskip("safetensors.numpy", reason="the safetensors extra is not installed")

CIFAR = ["botnet_cifar", "ceit_cifar", "maxvit_cifar", "mlp_mixer_cifar", "vit_cifar"]


def reference(fixture: str):
    """(kwargs, timm state dict, input, timm logits) of a reference fixture of either layout."""
    ref = load_fixture(fixture)
    if "config" in ref.files:
        return json.loads(str(ref["config"])), fixture_state(ref, "sd/"), ref["x"], ref["logits"]
    meta = json.loads(str(ref["meta"]))
    kwargs = {"num_classes": meta["num_classes"], **meta["minivit_kwargs"]}
    return kwargs, fixture_state(ref, "state/"), ref["input"], ref["logits"]


@pytest.mark.parametrize("name, fixture", [
    ("vit_cifar", "ref_vit.npz"), ("vit_cifar", "ref_vit_gap.npz"),
    ("mlp_mixer_cifar", "ref_mixer.npz"), ("ceit_cifar", "ref_ceit.npz"),
    ("botnet_cifar", "ref_botnet_cifar.npz"), ("maxvit_cifar", "ref_maxvit_cifar.npz")])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_checkpoint_path_gives_the_reference_logits(name, fixture, suffix, tmp_path):
    kwargs, state, x, logits = reference(fixture)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".safetensors":     # written by the safetensors package itself, as timm does
        st_numpy.save_file({k: np.require(v, requirements="C") for k, v in state.items()},
                           str(path))
    else:
        np.savez(path, **state)
    model = create_model(name, pretrained=False, checkpoint_path=path, **kwargs)
    assert_logits_match(eval_logits(model, x), logits)


def test_safetensors_written_by_minivit_is_read_by_the_package(tmp_path):
    model = create_model("vit_cifar", depth=1)
    path = save_state_dict_file(tmp_path / "m.safetensors", model.state_dict(),
                                metadata={"model": "vit_cifar"})
    theirs = st_numpy.load_file(str(path))
    ours = model.state_dict()
    assert list(theirs) == sorted(ours) and all(np.array_equal(theirs[k], ours[k]) for k in ours)
    assert read_metadata(path) == {"format": "np", "model": "vit_cifar"}
    again = load_state_dict_file(path)
    assert all(np.array_equal(again[k], ours[k]) for k in ours)


def test_checkpoint_path_errors_list_missing_and_unexpected_keys(tmp_path):
    state = create_model("vit_cifar", depth=1).state_dict()
    state["head.extra"] = state.pop("head.bias")
    path = tmp_path / "bad.safetensors"
    save_state_dict_file(path, state)
    with pytest.raises(CheckpointError) as err:
        create_model("vit_cifar", checkpoint_path=path, depth=1)
    msg = str(err.value)
    assert "\n" not in msg and "does not fit model vit_cifar with 10 classes" in msg
    assert "missing keys (1): head.bias" in msg and "unexpected keys (1): head.extra" in msg
    good = save_state_dict_file(tmp_path / "ten.safetensors",
                                create_model("vit_cifar", depth=1).state_dict())
    with pytest.raises(CheckpointError, match=r"does not fit model vit_cifar with 5 classes: "
                                              r"wrong shapes \(2\): head.weight \(10, 192\) in "
                                              r"the file vs \(5, 192\) in the model, head.bias"):
        create_model("vit_cifar", num_classes=5, checkpoint_path=good, depth=1)
    with pytest.raises(CheckpointError, match=r"no such weights file"):
        create_model("vit_cifar", checkpoint_path=tmp_path / "none.safetensors")
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unknown weights format '.pt'; expected a "
                                              r"\.safetensors or \.npz file"):
        create_model("vit_cifar", checkpoint_path=tmp_path / "w.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a header")
    with pytest.raises(CheckpointError, match=r"not a readable \.safetensors file"):
        load_state_dict_file(tmp_path / "junk.safetensors")


def test_pretrained_true_says_where_weights_come_from():
    with pytest.raises(ValueError, match=r"pretrained=True\): minivit downloads no weights; "
                                         r".*checkpoint_path=FILE"):
        create_model("vit_cifar", pretrained=True)
    assert list_models(pretrained=True) == []


def test_cifar_configurations_default_to_ten_classes():
    for name in CIFAR:
        model = create_model(name)
        assert model.num_classes == 10 and model.get_classifier().weight.shape[0] == 10, name
    assert create_model("vit_cifar", num_classes=100).get_classifier().weight.shape[0] == 100
    assert create_model("vit_tiny_patch16_224", depth=1).num_classes == 1000


def test_list_models_wildcards_like_timm():
    assert list_models("vit*") == ["vit_cifar", "vit_tiny_patch16_224"]
    assert list_models("*_cifar") == CIFAR
    assert list_models("*cifar", exclude_filters=["vit*", "maxvit*"]) == \
        ["botnet_cifar", "ceit_cifar", "mlp_mixer_cifar"]
    assert list_models(["mixer*", "ceit_*"]) == ["ceit_cifar", "ceit_tiny_patch16_224",
                                                 "mixer_b16_224"]
    assert list_models("mixer") == ["mixer_b16_224", "mlp_mixer_cifar"]   # no wildcard: substring
    assert list_models("resnet*") == []


@pytest.mark.parametrize("name", CIFAR)
def test_reset_get_classifier_and_no_weight_decay(name):
    model = create_model(name).eval()
    x = minivit.randn(1, 3, 32, 32)
    features = model.get_classifier().weight.shape[1]
    model.reset_classifier(0)
    with minivit.no_grad():
        pooled = model(x)
    assert isinstance(model.get_classifier(), nn.Identity) and pooled.shape == (1, features)
    model.reset_classifier(7)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.weight.shape == (7, features)
    with minivit.no_grad():
        assert model.num_classes == 7 and model(x).shape == (1, 7)
    names = dict(model.named_parameters())
    assert any(p is head.weight for p in names.values())   # the new head is trained
    no_wd = model.no_weight_decay()
    assert isinstance(no_wd, set) and no_wd <= set(names)
    assert all(names[n].ndim > 1 for n in no_wd)   # 1-D ones are excluded by ndim anyway
    decay = {id(p) for p in optim.param_groups_weight_decay(model, 0.05)[1]["params"]}
    assert not any(id(names[n]) in decay for n in no_wd)


def test_no_weight_decay_names_tokens_and_position_tables():
    assert create_model("vit_cifar").no_weight_decay() == {"cls_token", "pos_embed"}
    assert create_model("ceit_cifar").no_weight_decay() == {"cls_token", "pos_embed"}
    assert create_model("mlp_mixer_cifar").no_weight_decay() == set()
    assert all("relative_position_bias_table" in n
               for n in create_model("maxvit_cifar").no_weight_decay())
    assert all(n.endswith(("height_rel", "width_rel"))
               for n in create_model("botnet_cifar").no_weight_decay())


def test_reset_classifier_bad_input():
    model = create_model("vit_cifar", depth=1)
    with pytest.raises(ValueError, match=r"num_classes must be a non-negative integer, got -1"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match=r"global_pool='max' is not an option of "
                                         r"VisionTransformer \(options: token, avg\)"):
        model.reset_classifier(5, global_pool="max")
    model.reset_classifier(5, global_pool="avg")
    assert model.global_pool == "avg"
    with pytest.raises(ValueError, match=r"not an option of MlpMixer \(options: none\)"):
        create_model("mlp_mixer_cifar", depth=1).reset_classifier(5, global_pool="avg")


def test_reset_classifier_keeps_the_models_dtype():
    model = create_model("vit_cifar", depth=1).double()
    model.reset_classifier(4)
    assert model.get_classifier().weight.dtype == np.float64
    with minivit.no_grad():
        assert model(minivit.randn(1, 3, 32, 32, dtype=np.float64)).dtype == np.float64
