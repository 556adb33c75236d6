"""Configs for a VAAL round: frozen dataclasses, one source of defaults, the papers' presets by name.

Where a number comes from the VAAL paper (Sinha et al., ICCV 2019, Table/hyperparameter list) or the
authors' public code (github.com/sinhasam/vaal), the comment says so; choices the papers leave open are
listed in docs/design-choices.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VAALConfig:
    """The VAE + discriminator and how they are trained."""

    image_size: int = 32                   # VAE input side; 32x32 for CIFAR (paper Table)
    channels: tuple[int, ...] = (128, 256, 512, 1024)  # 4 stride-2 convs (authors' code)
    latent_dim: int = 32                   # d in the paper's table
    disc_hidden: int = 512                 # authors' code
    disc_layers: int = 5                   # paper: "5-layer MLP" (authors' code has 3)
    beta: float = 1.0                      # beta-VAE weight on KL
    adversary_weight: float = 1.0          # lambda_2 (1 for CIFAR, 10 for ImageNet/Caltech)
    vae_lr: float = 5e-4                   # alpha_1, Adam
    disc_lr: float = 5e-4                  # alpha_2, Adam
    vae_steps: int = 2                     # VAE steps per discriminator step (authors' code)
    batch_size: int = 64                   # per pool per step, per worker
    epochs: int = 100                      # one epoch = one pass over the unlabeled shard
    epoch_images: int | None = None        # at most this many unlabeled images per epoch, a fresh seeded
                                           # sample each epoch; None: all of them (the papers)
    hflip: bool = True                     # authors' CIFAR transform: RandomHorizontalFlip
    train_vae: bool = True                 # False: the "frozen VAE + D" ablation (D on an untrained VAE)
    disc_on_pixels: bool = False           # True: the "D only" ablation (D on the flattened image, no VAE)

    def __post_init__(self):
        if self.disc_on_pixels and self.train_vae:
            raise ValueError("a discriminator on pixels trains no VAE: set train_vae=False with disc_on_pixels")


@dataclass(frozen=True)
class TaskConfig:
    """The task model (classifier), its loss-prediction module, and how both are trained.

    Defaults are the CIFAR setting shared by Learning Loss (Yoo & Kweon 2019, authors' code) and TA-VAAL
    (Kim et al. 2021, Sec. 4.2): ResNet-18, SGD momentum 0.9, lr 0.1 for 160 epochs then 0.01 for 40.
    """

    arch: str = "resnet18"                 # resnet18 | vgg16_bn | cnn (a small CPU net)
    image_size: int = 32
    epochs: int = 200
    min_steps: int = 1000                  # at least this many optimizer steps: small labeled sets get more epochs
    batch_size: int = 128                  # per worker
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4             # Learning Loss code; TA-VAAL's text says 0.005
    milestones: tuple[int, ...] = (160,)   # lr x gamma at each
    gamma: float = 0.1
    crop_padding: int = 4                  # random 32x32 crop of the zero-padded image; 0: none
    hflip: bool = True
    dropout: float = 0.0                   # before the classifier; MC-Dropout and DBAL train with mc_dropout
    mc_dropout: float = 0.5                # dropout p for MC-Dropout / DBAL models
    loss_hidden: int = 128                 # loss-prediction module: per-stage linear width
    loss_weight: float = 1.0               # lambda (Learning Loss) / eta (TA-VAAL) on the ranking loss
    loss_margin: float = 1.0               # xi of Learning Loss' margin ranking loss
    loss_detach_epoch: int = 120           # after this (0-based) epoch the module's inputs are detached


@dataclass(frozen=True)
class AALUConfig:
    """AALU (Zhu & Wang, ICIP 2020, Sec. 3): a feature VAE and an assistant A, and its ablation switches."""

    hidden: int = 512                      # width of the 3-layer MLPs (the paper gives none)
    latent_dim: int = 32
    beta: float = 1.0                      # weight of the VAE's adversarial term, Eq. (3)/(6)
    rank_weight: float = 10.0              # lambda, Eq. (9); 0 drops the ranking loss
    margin: float = 0.1                    # xi, Eq. (8)
    lr: float = 5e-4                       # Adam, VAE and A
    batch_size: int = 128
    epochs: int = 100
    use_prediction: bool = True            # A sees [z, softmax]; False: z only (advVAE ablations)
    adversarial: bool = True               # False: A learns from Eq. (8) alone (lossLearn ablation)


@dataclass(frozen=True)
class Backbone:
    """A torchvision classifier whose penultimate features embed the pool in place of a strategy's own model
    (``--embedding``): Core-set, Cluster-Margin and TypiClust. Its weights are the user's; none is downloaded."""

    arch: str                              # a torchvision classification model, e.g. "resnet50"
    weights: str                           # its state dict (torch.save), a local path or URI
    image_size: int = 224                  # images are resized to this side (torchvision's weights: 224)


@dataclass(frozen=True)
class AcquisitionConfig:
    """How uncertainty strategies turn models into scores."""

    mc_passes: int = 25                    # T stochastic passes for MC-Dropout / DBAL
    ensemble_members: int = 5              # M task models, trained in parallel
    subset_factor: int | None = None       # score a seeded random subset of factor x b; 0: whole pool;
                                           # None: the strategy's paper default (10 for TA-VAAL, LL)
    max_clusters: int | None = None        # TypiClust's k-means clusters at most; None: |L| + b (the
                                           # paper); the authors' code caps them at 500
    embedding: Backbone | None = None      # None: each strategy embeds with its own model
    embeddings: str | None = None          # a Parquet file or folder of (id, embedding) to use instead


@dataclass(frozen=True)
class ScoringConfig:
    """How the unlabeled pool is streamed through the scoring actors."""

    batch_size: int = 256
    num_actors: int | None = None          # None: one per GPU, else one per CPU
    cpus_per_actor: float = 0.5            # fractional: 1 CPU/actor on a 2-CPU node starves the reads
    threads_per_actor: int | None = None   # torch intra-op threads; None: Ray's default
    block_bytes: int = 8 * 1024 ** 2       # Ray Data block size for the scoring read
    read_ahead_blocks: int = 16            # blocks per actor a stream may hold read and not yet scored:
                                           # without a bound Ray Data reads ahead into a share of the
                                           # whole object store, which grows with the pool up to the store
    amp: bool = False                      # bfloat16 autocast in GPU scorers: faster, scores rounded
    batch_retries: int = 3                 # a batch whose actor process died is rescored on a restarted
                                           # actor this many times (Ray's default, forever, would loop on
                                           # an input that crashes the process every time)
    batch_timeout_s: float = 600.0         # a batch still running after this fails the round by name
                                           # instead of hanging it (a decode that hangs): ~20x the slowest
                                           # batch measured, 256 images through resnet50 on 2 CPU cores


@dataclass(frozen=True)
class Preset:
    """The settings of the three trained models under one name: VAAL's, the task model's and AALU's.

    A round records the name next to the settings, so the name says which table row they were built from;
    ``overridden`` changes fields and keeps the name (the record shows the changed values).
    """

    name: str
    vaal: VAALConfig = field(default_factory=VAALConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    aalu: AALUConfig = field(default_factory=AALUConfig)

    def overridden(self, vaal: dict | None = None, task: dict | None = None, aalu: dict | None = None) -> Preset:
        """This preset with some fields of its models changed, e.g. ``vaal={"epochs": 1}``."""
        return Preset(self.name, dataclasses.replace(self.vaal, **(vaal or {})),
                      dataclasses.replace(self.task, **(task or {})), dataclasses.replace(self.aalu, **(aalu or {})))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # VAAL paper, CIFAR-10/100 row: d=32, lr 5e-4, lambda_2=1, beta=1, batch 64, 100 epochs. The task model:
    # the ResNet-18 recipe of Learning Loss and TA-VAAL (TaskConfig's defaults).
    Preset("cifar10"),
    Preset("cifar100"),
    # VAAL's ImageNet row: d=64, lambda_2=10, batch 64, 100 epochs, D lr 1e-3. The row's alpha_1=0.1 cannot be
    # an Adam rate for the VAE (it diverges); the authors' code uses 5e-4 for the VAE everywhere. Images are
    # downsampled to 64x64 for the VAE (the authors' ImageNet VAE takes 64x64 as well); the task model is
    # the same ResNet-18 recipe on the pool's 64x64 images.
    Preset("imagenet", VAALConfig(image_size=64, latent_dim=64, adversary_weight=10.0, disc_lr=1e-3),
           TaskConfig(image_size=64)),
    # Same algorithms, small enough for a 2-core CPU, no flips (digits). VAAL: quarter-width convs, 2 epochs.
    # Task: a 4-stage conv net, 15 epochs, lr 0.02 stepped at 12 (10 epochs at lr 0.05 was unstable on MNIST
    # subsets: the same 600 images gave 0.70 or 0.86 with 1 or 2 threads), and at least 400 optimizer steps
    # (15 epochs of 400 labels are 105). AALU: 128 wide, 10 epochs.
    Preset("cpu", VAALConfig(channels=(32, 64, 128, 256), disc_hidden=128, epochs=2, hflip=False),
           TaskConfig(arch="cnn", epochs=15, min_steps=400, batch_size=64, lr=0.02, milestones=(12,), hflip=False,
                      crop_padding=2, loss_detach_epoch=9),
           AALUConfig(hidden=128, epochs=10)),
)}


def preset(name: str, vaal: dict | None = None, task: dict | None = None, aalu: dict | None = None) -> Preset:
    """The named preset, with fields of its models overridden (e.g. ``vaal={"epochs": 1}``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].overridden(vaal, task, aalu)


@dataclass(frozen=True)
class Setup:
    """How a round trains and scores: shared by every round of an experiment."""

    preset: Preset = field(default_factory=lambda: PRESETS["cifar10"])
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    max_failures: int = 2                  # times Ray Train restarts failed workers from the latest checkpoint
    placement_timeout: float = 300         # seconds a round waits for room for its workers or actors; 0: forever
                                           # (a cluster whose autoscaler adds nodes for them)


@dataclass(frozen=True)
class RoundConfig:
    """One selection round: where the data is, how much to select, and the setup to train and score with."""

    pool: str
    labeled: str
    out: str
    budget: int
    strategy: str = "vaal"
    holdout: str | None = None             # manifest of ids kept out of training and selection, for evaluation
    seed: int = 0
    setup: Setup = field(default_factory=Setup)
    embeddings_cache: str | None = None    # where embeddings computed once are kept; None: in ``out``

    # The setup's settings, read through (strategies read cfg.vaal, cfg.workers, ...).
    vaal = property(lambda self: self.setup.preset.vaal)
    task = property(lambda self: self.setup.preset.task)
    aalu = property(lambda self: self.setup.preset.aalu)
    acquisition = property(lambda self: self.setup.acquisition)
    scoring = property(lambda self: self.setup.scoring)
    workers = property(lambda self: self.setup.workers)
    use_gpu = property(lambda self: self.setup.use_gpu)
    cpus_per_worker = property(lambda self: self.setup.cpus_per_worker)
    max_failures = property(lambda self: self.setup.max_failures)
    placement_timeout = property(lambda self: self.setup.placement_timeout)

    def to_dict(self) -> dict:
        """Flat, as run records have always held it and round fingerprints hash it: the round's fields, the
        preset's name (``preset``) and models (``vaal``, ``task``, ``aalu``), the rest of the setup."""
        flat = dataclasses.asdict(self)
        setup = flat.pop("setup")
        models = setup.pop("preset")
        return {**flat, "preset": models.pop("name"), **models, **setup}
