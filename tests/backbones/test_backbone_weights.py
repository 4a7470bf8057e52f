"""Weight loading: torchvision's ImageNet path (offline, through $TORCH_HOME), torchvision-layout files,
detlab-layout files, and the errors for files that do not fit."""

import os
from urllib.error import URLError
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from detlab.backbones import build_backbone
from detlab.backbones.weights import WeightsError

SMALL = ("resnet18", "mobilenet_v3_small")


def _torchvision_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    # non-trivial BN statistics, so that a wrongly mapped buffer changes the output
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _assert_same_features(backbone, reference, name):
    """The backbone's c5 equals the torchvision model's last feature map."""
    x = torch.randn(2, 3, 61, 53)
    with torch.no_grad():
        ours = backbone.eval()(x)["c5"]
        if name.startswith("resnet"):
            reference.fc = torch.nn.Identity()
            torch.testing.assert_close(ours.mean(dim=(2, 3)), reference(x))
        else:
            torch.testing.assert_close(ours, reference.features(x))


@pytest.mark.parametrize("name", SMALL)
def test_imagenet_weights_load_offline_from_torch_home(name, tmp_path, monkeypatch):
    reference = _torchvision_model(name)
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(urlparse(url).path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    backbone = build_backbone(name, weights="imagenet", levels=("c5",))
    assert backbone.weights == "imagenet"
    _assert_same_features(backbone, reference, name)


@pytest.mark.parametrize("name", SMALL)
def test_torchvision_layout_file(name, tmp_path):
    reference = _torchvision_model(name, seed=1)
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(name, weights=str(path), levels=("c5",))
    assert backbone.weights == str(path)
    _assert_same_features(backbone, reference, name)


def test_detlab_layout_file_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet18")
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("resnet18", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_file_of_another_architecture_lists_keys_and_shapes(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ValueError) as error:
        build_backbone("resnet18", weights=str(path))
    message = str(error.value)
    assert str(path) in message and "'resnet18'" in message
    assert "unexpected keys" in message and "layer1.0.conv3.weight" in message
    assert "shape mismatches" in message
    assert "layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in message


def test_missing_key_is_listed(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.bn2.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer4.1.bn2.running_var"):
        build_backbone("resnet18", weights=str(path))


def test_unreadable_or_absent_file_names_the_path(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not weights")
    with pytest.raises(ValueError, match="notes.txt: cannot be read"):
        build_backbone("resnet18", weights=str(path))
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_backbone("resnet18", weights=str(tmp_path / "nowhere.pt"))


def test_imagenet_without_network_says_where_the_file_goes(tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    expected = tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    with pytest.raises(WeightsError, match=f"without network, put the file at {expected}"):
        build_backbone("resnet18", weights="imagenet")


@pytest.mark.parametrize("content, what", [
    (b"", "the file is empty"),
    (b"PK\x03\x04" + b"\0" * 100, "a truncated or damaged torch file: an interrupted copy or download?"),
])  # fmt: skip
def test_a_damaged_cached_imagenet_file_says_to_remove_it_never_weights_only(content, what, tmp_path, monkeypatch):
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as raised:
        build_backbone("resnet18", weights="imagenet")
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    assert str(raised.value) == (f"{cached}: the cached torchvision weights {weights} cannot be read ({what}); "
                                 f"remove the file to download it again")


def test_a_file_of_python_objects_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module: pickled classes
    with pytest.raises(WeightsError) as raised:
        build_backbone("resnet18", weights=str(path))
    assert str(raised.value).startswith(f"{path}: cannot be read as PyTorch weights (it holds Python objects (")
    assert "weights_only" not in str(raised.value)
