"""--embedding: a user's torchvision classifier embeds the pool for Core-set, Cluster-Margin and TypiClust.

Weights here are random (a seeded init saved with torch.save); nothing is downloaded."""
import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from conftest import (TWO_TONE_META, assert_greedy_picks_are_stable, backbone_round, f32_noise, saved_weights,
                      trained_checkpoint, two_tone_batch)
from vaal_dist.acquisition import margin
from vaal_dist import cli
from vaal_dist.config import Backbone
from vaal_dist.coreset.kcenter import k_center_greedy
from vaal_dist.errors import InputError
from vaal_dist.models.backbone import read_backbone
from vaal_dist.pool.dataset import read_pool
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.round import run_round, validate_inputs
from vaal_dist.strategies.backbone import BackboneScorer
from vaal_dist.strategies.cluster_margin import FeaturesAndMargin


def reference_features(weights: str, arch: str, batch: dict, size: int) -> np.ndarray:
    """The input of the model's last linear layer, read with a hook, on images prepared with torchvision's own
    transforms."""
    state = torch.load(weights, weights_only=True)
    state = state.get("model", state)
    head = next(k for k in reversed(state) if k.endswith(".weight"))
    net = torchvision.models.get_model(arch, weights=None, num_classes=state[head].shape[0])
    net.load_state_dict(state)
    net.eval()
    last_linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = []
    last_linear.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    pixels = torch.from_numpy(np.stack([np.frombuffer(b, np.uint8).reshape(32, 32, 1) for b in batch["image"]]))
    x = TF.to_dtype(pixels.permute(0, 3, 1, 2).expand(-1, 3, -1, -1), torch.float32, scale=True)
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()      # its mean and std; nothing downloaded
    x = TF.normalize(TF.resize(x, [size, size], antialias=True), preset.mean, preset.std)
    with torch.inference_mode():
        net(x)
    return seen[0].numpy()


@pytest.mark.parametrize("arch, num_classes, wrap", [("resnet18", 1000, False), ("resnet18", 7, True),
                                                     ("mobilenet_v3_small", 1000, False)])
def test_the_features_are_the_input_of_the_models_last_linear_layer(tmp_path, arch, num_classes, wrap):
    """Whatever the family calls its classifier (resnet's fc, mobilenet's classifier[3]), and whatever its
    number of classes; grey images repeated to RGB, resized and normalised as torchvision's transforms do."""
    weights = saved_weights(tmp_path / "w.pt", arch, num_classes, wrap)
    batch, _ = two_tone_batch(16)
    scorer = BackboneScorer(read_backbone(Backbone(arch, weights, image_size=48)), TWO_TONE_META)
    got = scorer.embed(batch)
    want = reference_features(weights, arch, batch, 48)
    assert got.shape == want.shape == (17, scorer.embedding_dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=f32_noise(want))


def code_that_runs_when_unpickled(marker) -> object:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    return Payload()


@pytest.mark.parametrize("case, message", [
    ("unknown model", "'resnet19' is not a torchvision classification model"),
    ("missing file", "does not exist"),
    ("not torch's", "is not a torch state dict that torch.load\\(weights_only=True\\) reads"),
    ("code in the pickle", "is not a torch state dict that torch.load\\(weights_only=True\\) reads"),
    ("a tensor", "holds a Tensor, not a state dict"),
    ("another model's", "are not resnet34's: Error\\(s\\) in loading state_dict"),
    ("no linear layer", "squeezenet1_0 has no linear classifier"),
])
def test_weights_that_do_not_fit_are_named(tmp_path, case, message):
    path, arch = tmp_path / "w.pt", "resnet18"
    if case != "missing file":
        saved_weights(path)
    if case == "unknown model":
        arch = "resnet19"
    elif case == "not torch's":
        path.write_bytes(b"PK\x03\x04 not a zip")
    elif case == "code in the pickle":
        torch.save({"fc.weight": torch.zeros(2), "x": code_that_runs_when_unpickled(tmp_path / "ran")}, path)
    elif case == "a tensor":
        torch.save(torch.zeros(3), path)
    elif case == "another model's":
        arch = "resnet34"
    elif case == "no linear layer":
        arch = "squeezenet1_0"
    with pytest.raises(InputError, match=message):
        read_backbone(Backbone(arch, str(path), image_size=32))
    assert not (tmp_path / "ran").exists()


def test_cluster_margin_with_features_from_a_file_scores_the_task_models_margin_alone(tmp_path):
    checkpoint = trained_checkpoint(tmp_path / "task")
    batch, _ = two_tone_batch(16)
    got = FeaturesAndMargin(checkpoint, TWO_TONE_META, features=False).embed(batch)
    own = FeaturesAndMargin(checkpoint, TWO_TONE_META)
    with torch.inference_mode():
        want_margin = margin(own.probs(batch)).numpy()
    assert got.shape == (17, 3)                           # the guess (class, probability), then the margin
    np.testing.assert_array_equal(got[:, -1], want_margin.astype(np.float32))
    np.testing.assert_array_equal(own.embed(batch)[:, -3:], got)


@pytest.mark.slow
def test_a_coreset_round_with_a_backbone_trains_nothing_and_picks_the_greedy_on_its_features(ray_local, tmp_path,
                                                                                              tiny_pool):
    pool, labeled, ids, labeled_ids = tiny_pool
    weights = saved_weights(tmp_path / "w.pt")
    result = run_round(backbone_round(pool, labeled, tmp_path / "out", "coreset", weights, budget=10))
    assert result.record["train"] == {}
    assert result.record["config"]["acquisition"]["embedding"] == {"arch": "resnet18", "weights": weights,
                                                                   "image_size": 32}
    table = read_pool(pool).to_pandas()
    emb = BackboneScorer(read_backbone(Backbone("resnet18", weights, 32)), read_pool_meta(pool)).embed(
        {"id": table["id"].to_numpy(), "image": table["image"].to_numpy()})
    is_labeled = table["id"].isin(set(labeled_ids)).to_numpy()
    unlabeled_ids = table["id"].to_numpy()[~is_labeled]
    picks = k_center_greedy(emb[~is_labeled], emb[is_labeled], 10, unlabeled_ids)
    assert_greedy_picks_are_stable(emb[~is_labeled], emb[is_labeled], picks, f32_noise(emb))
    assert pq.read_table(result.selection).column("id").to_pylist() == list(unlabeled_ids[picks])


@pytest.mark.slow
def test_a_typiclust_round_with_a_backbone_trains_no_vae_and_needs_no_labeled_image(ray_local, tmp_path, tiny_pool):
    pool = tiny_pool[0]
    write_manifest(str(tmp_path / "none.parquet"), [])
    result = run_round(backbone_round(pool, str(tmp_path / "none.parquet"), tmp_path / "out", "typiclust",
                                      saved_weights(tmp_path / "w.pt")))
    picked = pq.read_table(result.selection).column("id").to_pylist()
    assert result.record["train"] == {} and len(set(picked)) == 12


@pytest.mark.slow
def test_a_cluster_margin_round_with_a_backbone_trains_the_task_model_for_its_margins(ray_local, tmp_path, tiny_pool):
    pool, labeled, ids, labeled_ids = tiny_pool
    cfg = backbone_round(pool, labeled, tmp_path / "out", "cluster_margin", saved_weights(tmp_path / "w.pt"))
    # The task model trains in the driver: the backbone's features are what is tested here, and the Ray Train
    # workers' path of the same training is test_strategy_rounds' cluster_margin round.
    result = run_round(dataclasses.replace(cfg, setup=dataclasses.replace(cfg.setup, workers=0)))
    picked = pq.read_table(result.selection).column("id").to_pylist()
    assert set(result.record["train"]) == {"task"}
    assert len(set(picked)) == 12 and not set(picked) & set(labeled_ids)


def test_a_strategy_that_embeds_nothing_refuses_a_backbone_before_writing(tmp_path, tiny_pool):
    pool, labeled = tiny_pool[:2]
    cfg = backbone_round(pool, labeled, tmp_path / "out", "entropy", saved_weights(tmp_path / "w.pt"))
    with pytest.raises(InputError, match="--embedding is for the strategies that embed the pool, "
                                         r"\['cluster_margin', 'coreset', 'typiclust'\]; entropy does not"):
        run_round(cfg)
    assert not (tmp_path / "out").exists()


def test_a_round_with_weights_that_do_not_fit_stops_before_writing(tmp_path, tiny_pool):
    pool, labeled = tiny_pool[:2]
    (tmp_path / "w.pt").write_bytes(b"not weights")
    with pytest.raises(InputError, match="is not a torch state dict"):
        run_round(backbone_round(pool, labeled, tmp_path / "out", "coreset", str(tmp_path / "w.pt")))
    assert not (tmp_path / "out").exists()


def test_weights_written_again_change_the_rounds_fingerprint(tmp_path, tiny_pool):
    """A rerun into the old --out must not return the old selection once the backbone was trained again."""
    pool, labeled = tiny_pool[:2]
    weights = saved_weights(tmp_path / "w.pt")
    cfg = backbone_round(pool, labeled, tmp_path / "out", "coreset", weights)
    first = validate_inputs(cfg, False)[3]
    saved_weights(tmp_path / "w.pt", num_classes=7)
    assert validate_inputs(cfg, False)[3] != first
    with pytest.raises(InputError, match="--embedding-weights .* is not a file"):
        validate_inputs(backbone_round(pool, labeled, tmp_path / "out", "coreset", str(tmp_path / "none.pt")), False)


def test_the_cli_takes_the_model_and_its_weights_together(tmp_path, tiny_pool, capsys):
    pool, labeled = tiny_pool[:2]
    given = ["--pool", pool, "--labeled", labeled, "--budget", "5", "--out", str(tmp_path / "out"),
             "--strategy", "coreset", "--embedding", "resnet18"]
    assert cli.main(["round", *given]) == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "vaal-dist: error: --embedding and --embedding-weights go together: the model and its weights"
