"""VAE / discriminator shapes, and what one VAE or D step changes."""
import pytest
import torch

from vaal_dist.config import preset
from vaal_dist.models.vaal import VAE, Discriminator, pixels_to_input
from vaal_dist.train.vaal_loop import disc_step, train_epoch, vae_step


@pytest.mark.parametrize("name,size,z", [("cifar10", 32, 32), ("imagenet", 64, 64)])
def test_paper_shapes(name, size, z):
    cfg = preset(name).vaal
    vae, disc = VAE(cfg, 3), Discriminator(cfg)
    x = torch.randn(2, 3, size, size)
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (2, z)
    assert vae.encoder[0].out_channels == 128 and vae.encoder[9].out_channels == 1024
    assert disc(mu).shape == (2,)
    assert sum(isinstance(m, torch.nn.Linear) for m in disc.net) == cfg.disc_layers == 5


def test_pixels_to_input_maps_uint8_to_unit_range():
    x = pixels_to_input(torch.tensor([0, 255], dtype=torch.uint8))
    assert x.tolist() == [-1.0, 1.0]


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _changed(before, m):
    return [not torch.equal(a, b) for a, b in zip(before, m.parameters())]


def test_vae_step_moves_only_the_vae_and_disc_step_only_the_disc():
    torch.manual_seed(0)
    cfg = preset("cpu").vaal
    vae, disc = VAE(cfg, 1), Discriminator(cfg)
    opt_v = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr)
    x_l, x_u = torch.randn(4, 1, 32, 32), torch.randn(6, 1, 32, 32)
    v0, d0 = _params(vae), _params(disc)
    metrics = vae_step(vae, disc, opt_v, x_l, x_u, cfg)
    assert all(_changed(v0, vae)) and not any(_changed(d0, disc))
    assert set(metrics) == {"recon", "kl", "vae_adv"}
    v1 = _params(vae)
    disc_step(vae, disc, opt_d, x_l, x_u)
    assert all(_changed(d0, disc)) and not any(_changed(v1, vae))


def test_discriminator_learns_to_separate_the_pools():
    """With the VAE frozen (lr 0), D steps alone drive D(labeled) up and D(unlabeled) down."""
    torch.manual_seed(0)
    cfg = preset("cpu").vaal
    vae, disc = VAE(cfg, 1), Discriminator(cfg)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    x_l, x_u = torch.rand(16, 1, 32, 32), -torch.rand(16, 1, 32, 32)   # two visibly different pools
    first = disc_step(vae, disc, opt_d, x_l, x_u)
    for _ in range(30):
        m = disc_step(vae, disc, opt_d, x_l, x_u)
    assert m["d_labeled"] > 0.9 and m["d_unlabeled"] < 0.1
    assert m["d_auc"] == 1.0 and first["d_auc"] < 1.0      # the AUC logged per round shows it


@pytest.mark.parametrize("train_vae,want", [(True, {"vae": 5, "disc": 2}), (False, {"vae": 0, "disc": 5})])
def test_train_epoch_runs_two_vae_steps_per_disc_step(train_vae, want):
    """VAAL: 2 VAE steps per D step. Without a VAE to train (the ablations), D steps on every pair."""
    torch.manual_seed(0)
    cfg = preset("cpu", vaal={"vae_steps": 2, "train_vae": train_vae}).vaal
    vae, disc = VAE(cfg, 1), Discriminator(cfg)
    opt_v = torch.optim.Adam(vae.parameters()); opt_d = torch.optim.Adam(disc.parameters())
    calls = {"vae": 0, "disc": 0}
    import vaal_dist.train.vaal_loop as loop
    real_v, real_d = loop.vae_step, loop.disc_step

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped
    loop.vae_step, loop.disc_step = count("vae", real_v), count("disc", real_d)
    try:
        labeled = iter([{"pixels": torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)}] * 10)
        unlabeled = [{"pixels": torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)}] * 5
        metrics = train_epoch(vae, disc, opt_v, opt_d, labeled, unlabeled, cfg)
    finally:
        loop.vae_step, loop.disc_step = real_v, real_d
    assert calls == want
    assert {"disc_loss"} | ({"recon", "kl", "vae_adv"} if train_vae else set()) <= set(metrics)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn", "cnn"])
def test_task_models_expose_logits_features_and_four_stages(arch):
    from vaal_dist.models.task import TaskModel

    model = TaskModel(preset("cifar10", task={"arch": arch}).task, num_classes=10, in_channels=3, with_loss_module=True).eval()
    out, predicted_loss = model(torch.zeros(2, 3, 32, 32))
    assert out.logits.shape == (2, 10) and out.features.shape == (2, model.net.feature_dim)
    assert len(out.stages) == 4 and predicted_loss.shape == (2,)
    if arch == "resnet18":      # the small-image stem keeps 32x32 into layer1
        assert out.stages[0].shape[-1] == 32 and out.features.shape[1] == 512


def test_ta_vaal_vae_and_discriminator_take_the_rank():
    from vaal_dist.train.vaal_loop import build_models

    cfg = preset("cpu").vaal
    vae, disc = build_models(cfg, 1, conditioned=True)
    x, r = torch.zeros(3, 1, 32, 32), torch.tensor([0.1, -2.0, 5.0])
    recon, mu, _ = vae(x, torch.sigmoid(r))
    assert recon.shape == x.shape and disc(mu, r).shape == (3,)
    with pytest.raises(RuntimeError):
        disc(mu)                  # a conditioned D cannot score without r


def test_a_one_image_batch_keeps_the_loss_module_in_the_ddp_graph(tmp_path):
    """With no pair to rank, the loss module still takes part in backward; else DDP's next step fails."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from vaal_dist.train.task_loop import build_optimizer, build_task_model, task_step

    cfg = preset("cpu").task
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(build_task_model(cfg, 10, 1, "bce"))
        opt, _ = build_optimizer(model, cfg)
        for n in (1, 4, 1, 4):
            metrics = task_step(model, opt, torch.zeros(n, 1, 32, 32), torch.zeros(n, dtype=torch.long), cfg,
                                "bce", detach=False)
            assert ("rank_loss" in metrics) == (n > 1)
    finally:
        dist.destroy_process_group()
