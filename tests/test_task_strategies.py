"""Task-model scorers without Ray: the sign of each score on planted images, determinism, batch independence.

The task model here is trained in-process (plain torch, a few seconds) on dark digits of class 0 and
light ones of class 1; a mid-gray image is the one the model should be least sure of.
"""
import numpy as np
import pyarrow as pa
import pytest
import ray.train
import torch

from conftest import (TWO_TONE_META, assert_same_top_k, f32_noise, pool_batch, trained_checkpoint, two_tone_batch,
                      vaal_checkpoint)
from vaal_dist.config import AALUConfig, preset
from vaal_dist.scoring.ids import random_subset
from vaal_dist.strategies.ensemble import EnsembleScorer
from vaal_dist.strategies.entropy import EntropyScorer
from vaal_dist.strategies.learning_loss import PredictedLossScorer
from vaal_dist.strategies.margin import MarginScorer
from vaal_dist.strategies.mc_dropout import MCDropoutScorer
from vaal_dist.acquisition import entropy
from vaal_dist.train.aalu_loop import aalu_step, build_aalu
from vaal_dist.train.task_loop import member_file, member_files, scheduled


def score_tolerance(scorer, batch, scores) -> np.ndarray:
    """Per image, how far ``scores`` (``scorer(batch)``) may move between batch shapes and thread counts:
    each is a float64 function of float32 network outputs, each of which moves by up to delta = f32_noise.
    """
    with torch.inference_mode():
        x = scorer.inputs(batch)
        if isinstance(scorer, PredictedLossScorer):                   # the score is the output itself
            return np.full(len(scores), f32_noise(scorer.model(x)[1].numpy()))
        if isinstance(scorer, MCDropoutScorer):                       # (T, B, C): each pass's logits
            features = scorer.model.net(x).features
            logits = scorer.model.net.fc(features[None] * scorer.masks(batch["id"], features.shape[1])).numpy()
        else:                                                         # (M, B, C): each model's logits
            logits = torch.stack([m.net(x).logits for m in scorer.models]).numpy()
    delta = f32_noise(logits)
    assert logits.shape[-1] == 2                                      # the bounds below are for two classes
    gap = logits[..., 0] - logits[..., 1]                            # moves by <= 2 delta
    if isinstance(scorer, EnsembleScorer) or getattr(scorer, "acquisition", None) == "variation_ratio":
        # votes: an argmax flips only where |gap| <= 2 delta; with none there, the scores are exact
        assert np.abs(gap).min() > 2 * delta, f"a vote is within float32 noise of a tie: |gap| {np.abs(gap).min()}"
        return np.zeros(len(scores))
    # Entropy H of the mean p of T binary softmaxes (T = 1: plain entropy). A pass's probabilities move by
    # p0 p1 |dgap| <= 2 delta min(p0, p1), so p's by <= 2 delta min(p), and H (dH/dp1 = log(p0/p1)) by
    # <= 2 delta min(p) |log(p0/p1)| <= 2 delta H, as min(p) log(max(p)/min(p)) <= -min(p) log min(p) <= H;
    # plus H's own float64 rounding (p log p at p ~ 1), a few eps64.
    return 2 * delta * scores + 4 * np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("plain") / "ckpt")


@pytest.fixture(scope="module")
def with_dropout(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("mc") / "ckpt", dropout=0.5)


def test_member_files_are_the_task_models_files_in_member_order():
    """What the scorers load: the names member_file writes, read back in member order (10 after 2), nothing else."""
    others = ["task-x.pt", "task-3.pt.tmp", "vaal.pt", ".complete", "xtask-4.pt"]
    assert member_files([member_file(m) for m in (10, 2, 0, 1)] + others) == [member_file(m) for m in (0, 1, 2, 10)]
    assert member_files([*others, member_file(None)]) == [member_file(None)]


def test_entropy_picks_the_ambiguous_image_first(plain):
    batch, _ = two_tone_batch()
    scores = EntropyScorer(plain, TWO_TONE_META)(batch)
    assert batch["id"][np.argmax(scores)] == "zz-gray"
    assert scores.shape == (len(batch["id"]),) and np.all(scores >= 0) and np.all(scores <= np.log(2) + 1e-9)


def test_margin_picks_the_ambiguous_image_first(plain):
    batch, _ = two_tone_batch()
    scorer = MarginScorer(plain, TWO_TONE_META)
    scores = scorer(batch)
    assert batch["id"][np.argmax(scores)] == "zz-gray"
    with torch.inference_mode():
        probs = scorer.probs(batch).numpy()
    np.testing.assert_array_equal(scores, np.sort(probs, 1)[:, -2] - np.sort(probs, 1)[:, -1])


def test_dbal_picks_the_ambiguous_image_first_and_is_the_entropy_of_the_mean(with_dropout):
    batch, _ = two_tone_batch()
    scorer = MCDropoutScorer(with_dropout, TWO_TONE_META, passes=20, seed=3, acquisition="max_entropy")
    scores = scorer(batch)
    assert batch["id"][np.argmax(scores)] == "zz-gray"
    with torch.no_grad():
        want = entropy(scorer.probs(batch).mean(0)).numpy()
    np.testing.assert_allclose(scores, want)


def test_mc_dropout_scores_do_not_depend_on_the_batch_an_image_is_in(with_dropout):
    batch, _ = two_tone_batch()
    scorer = MCDropoutScorer(with_dropout, TWO_TONE_META, passes=10, seed=3, acquisition="variation_ratio")
    whole = scorer(batch)
    order = np.random.default_rng(0).permutation(len(batch["id"]))
    halves = [{k: v[order[s]] for k, v in batch.items()} for s in (slice(0, 20), slice(20, None))]
    split = np.empty_like(whole)
    split[order[:20]], split[order[20:]] = scorer(halves[0]), scorer(halves[1])
    assert not score_tolerance(scorer, batch, whole).any()         # no vote near a tie: batch-free means equal
    np.testing.assert_array_equal(split, whole)
    again = MCDropoutScorer(with_dropout, TWO_TONE_META, passes=10, seed=3, acquisition="variation_ratio")(batch)
    np.testing.assert_array_equal(again, whole)                      # same seed, same masks
    other = MCDropoutScorer(with_dropout, TWO_TONE_META, passes=10, seed=4, acquisition="max_entropy")
    assert not np.array_equal(other(batch), MCDropoutScorer(with_dropout, TWO_TONE_META, passes=10, seed=3,
                                                            acquisition="max_entropy")(batch))
    assert set(np.round(whole * 10).astype(int)) <= set(range(11))   # a ratio of votes out of T=10


def test_mc_dropout_refuses_a_model_trained_without_dropout(plain):
    with pytest.raises(ValueError, match="dropout"):
        MCDropoutScorer(plain, TWO_TONE_META, passes=5, seed=0, acquisition="variation_ratio")


def test_ensemble_variation_ratio_counts_disagreeing_members(tmp_path):
    ckpt = trained_checkpoint(tmp_path / "ens", seeds=(0, 1, 2))
    scorer = EnsembleScorer(ckpt, TWO_TONE_META)
    assert len(scorer.models) == 3
    batch, labels = two_tone_batch()
    light = np.append(labels == 1, False)
    with torch.no_grad():
        gaps = torch.stack([m.net(scorer.inputs(batch)).logits @ torch.tensor([-1.0, 1.0])
                            for m in scorer.models]).numpy()              # (M, B): logit 1 - logit 0
    # Trained alike, the members agree everywhere (each tone right, gray called light). Plant one dissent:
    # move member 2's boundary halfway between gray and its least sure light image, so it calls gray dark.
    assert np.all(gaps[:, -1] > 0) and np.all(gaps[2, -1] < gaps[2, light]), "precondition: gray is light, least surely"
    with torch.no_grad():
        scorer.models[2].net.fc.bias[1] -= float(gaps[2, -1] + gaps[2, light].min()) / 2
        votes = torch.stack([m.net(scorer.inputs(batch)).logits.argmax(1) for m in scorer.models]).numpy()
    np.testing.assert_array_equal(votes[:, :-1], np.broadcast_to(labels, (3, len(labels))))
    np.testing.assert_array_equal(votes[:, -1], [1, 1, 0])
    scores = scorer(batch)
    np.testing.assert_array_equal(scores[:-1], 0)                       # three votes of three
    assert scores[-1] == pytest.approx(1 - 2 / 3)                       # two votes of three


def test_predicted_loss_scorer_is_the_loss_module_output(tmp_path):
    ckpt = trained_checkpoint(tmp_path / "ll", rank_loss="margin")
    scorer = PredictedLossScorer(ckpt, TWO_TONE_META)
    batch, _ = two_tone_batch()
    with torch.no_grad():
        _, want = scorer.model(scorer.inputs(batch))
    scores = scorer(batch)
    np.testing.assert_allclose(scores, want.double().numpy())
    assert scores.std() > 0                                          # a trained module tells images apart


def test_random_subset_is_seeded_uniform_and_order_free():
    ids = pa.array([f"id-{i}" for i in range(1000)])
    a = random_subset(ids, 100, seed=1)
    assert len(set(a.to_pylist())) == 100 and set(a.to_pylist()) <= set(ids.to_pylist())
    assert random_subset(ids[::-1], 100, seed=1).to_pylist() == a.to_pylist()
    assert random_subset(ids, 100, seed=2).to_pylist() != a.to_pylist()
    assert random_subset(ids, 5000, seed=1) is ids


def test_the_subset_is_drawn_afresh_when_the_labeled_set_grows():
    """Round k+1 must not score mostly round k's rejected candidates again (the authors reshuffle)."""
    from vaal_dist.config import RoundConfig
    from vaal_dist.round_inputs import RoundInputs

    ids = pa.array([f"id-{i}" for i in range(2000)])

    def seed(labeled, config_seed=0):
        return RoundInputs(RoundConfig("p", "l", "o", 1, seed=config_seed), TWO_TONE_META, pa.array(labeled), "").round_seed

    first = set(random_subset(ids, 100, seed(["a", "b"])).to_pylist())
    later = set(random_subset(ids, 100, seed(["a", "b", "c"])).to_pylist())
    assert len(first & later) < 30                                       # ~5 expected by chance
    assert seed(["b", "a"]) == seed(["a", "b"]) != seed(["a", "b"], config_seed=1)


def test_aalu_assistant_scores_unlabeled_looking_features_highest():
    """AALU's sign: A(z_L) -> 0, A(z_U) -> 1, so an image unlike the labeled set gets the *highest* A."""
    torch.manual_seed(0)
    cfg = AALUConfig(hidden=32, latent_dim=4, batch_size=32, rank_weight=0.0)
    vae, assistant = build_aalu(cfg, feature_dim=8, num_classes=2)
    opt_v, opt_a = torch.optim.Adam(vae.parameters(), 5e-3), torch.optim.Adam(assistant.parameters(), 5e-3)
    probs = torch.full((32, 2), 0.5)
    for _ in range(150):
        lab = {"features": torch.randn(32, 8), "probs": probs, "loss": torch.rand(32)}
        unl = {"features": torch.randn(32, 8) + 4.0, "probs": probs}
        aalu_step(vae, assistant, opt_v, opt_a, lab, unl, cfg)
    vae.eval(), assistant.eval()
    with torch.no_grad():
        a = assistant(vae.encode(torch.cat([torch.zeros(1, 8), torch.full((1, 8), 4.0)]))[0], probs[:2])
    assert a[1] > a[0]


def test_aalu_ranking_loss_orders_the_assistant_by_task_loss():
    torch.manual_seed(0)
    cfg = AALUConfig(hidden=32, latent_dim=4, adversarial=False, rank_weight=10.0)
    vae, assistant = build_aalu(cfg, feature_dim=8, num_classes=2)
    opt_v, opt_a = torch.optim.Adam(vae.parameters(), 5e-3), torch.optim.Adam(assistant.parameters(), 5e-3)
    for _ in range(200):
        f = torch.randn(32, 8)
        lab = {"features": f, "probs": torch.full((32, 2), 0.5), "loss": f[:, 0]}   # loss grows with f_0
        aalu_step(vae, assistant, opt_v, opt_a, lab, {"features": torch.randn(32, 8),
                                                      "probs": torch.full((32, 2), 0.5)}, cfg)
    f = torch.zeros(2, 8)
    f[1, 0] = 2.0
    with torch.no_grad():
        a = assistant(vae.encode(f)[0], torch.full((2, 2), 0.5))
    assert a[1] > a[0]


def test_vae_only_w2_is_the_closed_form_distance_to_the_centroid(tmp_path, tiny_pool):
    from vaal_dist.pool.io import read_pool_meta
    from vaal_dist.strategies.vaal_ablations import W2Scorer

    pool = tiny_pool[0]
    ckpt = vaal_checkpoint(tmp_path / "ckpt")
    batch = pool_batch(pool)
    gaussians = W2Scorer(ckpt, read_pool_meta(pool)).embed(batch).astype(np.float64)   # (B, 2z) [mu, sigma]
    centroid = gaussians[:10].mean(0)
    scores = W2Scorer(ckpt, read_pool_meta(pool), centroid=centroid.tolist())(batch)
    z = gaussians.shape[1] // 2
    want = np.sqrt(((gaussians[:, :z] - centroid[:z]) ** 2).sum(1) + ((gaussians[:, z:] - centroid[z:]) ** 2).sum(1))
    np.testing.assert_allclose(scores, want, rtol=1e-5)
    assert np.all(gaussians[:, z:] > 0)                 # sigma, not log-variance


@pytest.fixture(scope="module")
def two_tone_pool(tmp_path_factory):
    from vaal_dist.pool.io import write_pool

    batch, _ = two_tone_batch()
    path = tmp_path_factory.mktemp("two-tone") / "pool"
    rows = len(batch["id"])
    write_pool(str(path), [pa.table({"id": batch["id"][a:b], "image": pa.array(list(batch["image"][a:b]), pa.binary())})
                           for a, b in ((0, rows // 2), (rows // 2, rows))], TWO_TONE_META)
    return str(path), batch


# Each case trains its model(s) first: one stays in the fast tier, the rest run with the slow ones.
@pytest.mark.parametrize("scorer,extra,rank_loss,dropout,seeds", [
    (EntropyScorer, {}, None, None, (0,)),
    pytest.param(MCDropoutScorer, {"passes": 6, "seed": 1, "acquisition": "max_entropy"}, None, 0.5, (0,),
                 marks=pytest.mark.slow),
    pytest.param(EnsembleScorer, {}, None, None, (0, 1), marks=pytest.mark.slow),
    pytest.param(PredictedLossScorer, {}, "bce", None, (0,), marks=pytest.mark.slow),
])
def test_streamed_task_scores_equal_in_memory(ray_local, tmp_path, two_tone_pool, scorer, extra, rank_loss,
                                              dropout, seeds):
    from vaal_dist.config import ScoringConfig
    from vaal_dist.pool.dataset import read_pool
    from vaal_dist.scoring.spec import ScorerSpec
    from vaal_dist.scoring.stream import stream_top_k

    pool, batch = two_tone_pool
    kwargs = {"checkpoint": trained_checkpoint(tmp_path / "ckpt", seeds=seeds, rank_loss=rank_loss, dropout=dropout),
              "meta": TWO_TONE_META, **extra}
    in_memory = scorer(**kwargs)                     # one batch of 65, this process's threads
    scores = in_memory(batch)
    got = stream_top_k(read_pool(pool), ScorerSpec(scorer, kwargs), 9, ScoringConfig(batch_size=8, num_actors=2))
    assert_same_top_k(got, batch["id"], scores, score_tolerance(in_memory, batch, scores), 9)


def test_ta_vaal_scores_minus_the_logit_of_d_on_mu_and_the_rank(tmp_path):
    from vaal_dist.strategies.ta_vaal import RankScorer, TAVAALScorer
    from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, save_checkpoint

    task_ckpt = trained_checkpoint(tmp_path / "task", rank_loss="bce")
    torch.manual_seed(0)
    vae, disc = build_models(preset("cpu").vaal, 1, conditioned=True)
    (tmp_path / "vaal").mkdir()
    opt = torch.optim.Adam(vae.parameters())
    save_checkpoint(str(tmp_path / "vaal" / CHECKPOINT_FILE), vae, disc, opt, opt, 1, preset("cpu").vaal, 1,
                    conditioned=True)
    batch, _ = two_tone_batch()
    scores = TAVAALScorer(task_ckpt, ray.train.Checkpoint.from_directory(str(tmp_path / "vaal")), TWO_TONE_META)(batch)
    ranker = RankScorer(task_ckpt, TWO_TONE_META)
    r = torch.from_numpy(ranker(batch)).float()
    vae.eval(), disc.eval()
    with torch.no_grad():
        want = -disc(vae.encode_mean(ranker.inputs(batch)), r).double().numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    columns = ranker.columns(batch)
    assert columns["pixels"].shape == (len(batch["id"]), 1, 32, 32) and columns["rank"].dtype == np.float32


@pytest.mark.parametrize("ablation", [pytest.param({}, marks=pytest.mark.slow),      # 40 epochs of VAE training
                                      {"train_vae": False}, {"train_vae": False, "disc_on_pixels": True}],
                         ids=["vaal", "vaal_frozen_vae", "vaal_disc_only"])
def test_vaal_family_picks_the_image_unlike_the_labeled_set_first(tmp_path, ablation):
    """Labeled: dark images; unlabeled: dark and light. D learns light = unlabeled, so light ranks first."""
    from vaal_dist.strategies.vaal import VAALScorer
    from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, save_checkpoint, train_epoch

    cfg = preset("cpu", vaal={"hflip": False, **ablation}).vaal
    torch.manual_seed(0)
    vae, disc = build_models(cfg, 1)
    opt_v, opt_d = torch.optim.Adam(vae.parameters(), cfg.vae_lr), torch.optim.Adam(disc.parameters(), cfg.disc_lr)
    batch, labels = two_tone_batch(n=64)
    pixels = torch.from_numpy(np.stack([np.frombuffer(b, np.uint8).reshape(32, 32, 1) for b in batch["image"]])
                              ).permute(0, 3, 1, 2).contiguous()
    dark = pixels[:-1][labels == 0]
    for _ in range(40):
        train_epoch(vae, disc, opt_v, opt_d, iter([{"pixels": dark[:16]}, {"pixels": dark[16:]}] * 8),
                    [{"pixels": pixels[i:i + 16]} for i in range(0, 64, 16)], cfg)
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(str(tmp_path / "ckpt" / CHECKPOINT_FILE), vae, disc, opt_v, opt_d, 15, cfg, 1)
    scores = VAALScorer(ray.train.Checkpoint.from_directory(str(tmp_path / "ckpt")), TWO_TONE_META)(batch)
    first_half = np.argsort(-scores[:-1], kind="stable")[:16]        # the 16 picked first of 32 light
    assert np.all(labels[first_half] == 1)
    assert scores[:-1][labels == 1].mean() > scores[:-1][labels == 0].mean()


def test_aalu_losslearn_steps_over_a_one_image_labeled_batch():
    cfg = AALUConfig(hidden=16, latent_dim=4, adversarial=False)
    vae, assistant = build_aalu(cfg, feature_dim=8, num_classes=2)
    opt_v, opt_a = torch.optim.Adam(vae.parameters()), torch.optim.Adam(assistant.parameters())
    before = [p.clone() for p in assistant.parameters()]
    lab = {"features": torch.randn(1, 8), "probs": torch.full((1, 2), 0.5), "loss": torch.rand(1)}
    metrics = aalu_step(vae, assistant, opt_v, opt_a, lab, {"features": torch.randn(4, 8),
                                                            "probs": torch.full((4, 2), 0.5)}, cfg)
    assert "a_rank" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(before, assistant.parameters()))   # nothing to learn from


def test_a_small_labeled_set_gets_epochs_enough_for_the_minimum_steps_and_a_large_one_is_unchanged():
    cpu = preset("cpu").task                          # 15 epochs of batch 64, lr x0.1 at 12, detach at 9, 400 steps
    few = scheduled(cpu, images=400)                  # 7 steps an epoch: 105 in 15 epochs, 406 in 58
    assert (few.epochs, few.milestones, few.loss_detach_epoch) == (58, (46,), 35)   # 12 and 9 of 15, as of 58
    assert few.epochs * 7 >= cpu.min_steps > (few.epochs - 1) * 7
    assert scheduled(cpu, images=64 * 30) is cpu      # 30 steps an epoch: 450 in 15 epochs already
    cifar = preset("cifar10").task
    assert scheduled(cifar, images=1000) is cifar     # the papers' 200 epochs of 8 steps: 1,600 >= 1,000
    assert scheduled(cpu, images=0).epochs == 400     # an empty shard still counts one step an epoch
