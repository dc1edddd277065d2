"""A small CIFAR-10 classifier whose penultimate layer serves as a feature network for FID/KID/PR.

Numbers computed with it are *vargen's CIFAR-10 features*, not Inception FID: they rank samplers of
the 32x32 demo model against each other and say nothing comparable to published FIDs.

The network is a narrow ResNet-9 (Page's DAWNBench design: conv-BN-ReLU, max-pool downsampling, two
residual blocks, global max-pool, a scaled linear head). Training: SGD with Nesterov momentum,
one-cycle learning rate, label smoothing, random crops (4 px reflect padding) and flips. Resumable:
data order and augmentation are functions of (seed, step), the checkpoint holds model and optimiser.

    vargen train features --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --out runs/cifar10-features \
        --export vargen/zoo/cifar10-features --threads 1
"""
from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import export_fp16, param_groups, run_steps

CIFAR_MEAN = (125.3, 123.0, 113.9)  # per-channel, on the 0..255 scale
CIFAR_STD = (63.0, 62.1, 66.7)


@dataclass
class FeatureNetConfig:
    widths: tuple[int, int, int, int] = (24, 48, 96, 192)  # stem, stage 1, stage 2, stage 3
    num_classes: int = 10
    image_size: int = 32
    head_scale: float = 0.125

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNetConfig":
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x):
        return x + self.body(x)


class CifarFeatureNet(nn.Module):
    """Images as floats in [0, 255], ``[B, 3, 32, 32]`` -> logits; ``features`` gives the penultimate layer."""

    def __init__(self, config: FeatureNetConfig | None = None):
        super().__init__()
        self.config = config or FeatureNetConfig()
        w0, w1, w2, w3 = self.config.widths
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)
        self.body = nn.Sequential(
            conv_bn(3, w0),
            conv_bn(w0, w1), nn.MaxPool2d(2), Residual(w1),
            conv_bn(w1, w2), nn.MaxPool2d(2),
            conv_bn(w2, w3), nn.MaxPool2d(2), Residual(w3),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(w3, self.config.num_classes, bias=False)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x.float() - self.mean) / self.std)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f) * self.config.head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


def load_feature_net(folder: str | Path) -> CifarFeatureNet:
    """The exported network (``model.safetensors`` fp16 + ``config.json``) in float32, eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"feature network weights not found: {weights} (train them with "
                                f"`vargen train features --data ... --out ... --export {folder}`)")
    meta = json.loads((folder / "config.json").read_text())
    net = CifarFeatureNet(FeatureNetConfig.from_dict(meta["config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class FeatureTrainArgs:
    data: str
    out: str
    export: str | None = None
    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_frac: float = 0.2
    seed: int = 0
    save_every: int = 200
    threads: int = 0
    limit: int = 0  # use only the first N training images (tiny test runs)
    test_limit: int = 0
    config: dict = field(default_factory=dict)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after reflect padding, and a random horizontal flip, per image (float input)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, 3, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, 3, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def subset(images: torch.Tensor, labels: torch.Tensor, limit: int, seed: int):
    """A fixed random subset of ``limit`` examples (the loader sorts by class), or everything."""
    if not limit or limit >= images.shape[0]:
        return images, labels
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return images[keep], labels[keep]


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """The examples of ``step``: epoch-wise permutations seeded by (seed, epoch); no state to save."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


@torch.no_grad()
def accuracy(net: CifarFeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    net.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        correct += (net(images[i:i + batch_size].float()).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / images.shape[0]


def _log(out: Path, text: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {text}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def train_features(args: FeatureTrainArgs, command: str | None = None) -> Path:
    """SGD with Nesterov momentum, one-cycle schedule (warm-up then cosine to 0), label smoothing; the batches
    of a step depend only on (seed, step), so a resumed run sees exactly the data of a straight one."""
    from ..runtime import configure_threads
    from .data import load_images, require_data

    configure_threads(args.threads)
    require_data(args.data)  # before the run folder exists
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, classes = load_images(args.data, "train", 32)
    images, labels = subset(images, labels, args.limit, args.seed)
    per_epoch = images.shape[0] // args.batch_size
    total = max(1, int(round(args.epochs * per_epoch)))
    cfg = FeatureNetConfig.from_dict({**args.config, "num_classes": len(classes)})
    torch.manual_seed(args.seed)
    net = CifarFeatureNet(cfg)
    opt = torch.optim.SGD(param_groups(net, args.weight_decay), lr=args.lr, momentum=args.momentum, nesterov=True)
    times_path = out / "times.json"  # seconds of training: wall clock, and CPU time of all threads
    times = json.loads(times_path.read_text()) if times_path.is_file() and (out / "last.pt").is_file() else {"wall": 0.0, "cpu": 0.0}
    if not (out / "last.pt").is_file():
        _log(out, f"start: {total} steps ({args.epochs} epochs of {per_epoch}), config {cfg.to_dict()}, "
                  f"{sum(p.numel() for p in net.parameters())} parameters")
    clock = {"wall": time.perf_counter(), "cpu": time.process_time(), "avg": None}

    def step_fn(step):
        idx = batch_indices(step, images.shape[0], args.batch_size, args.seed)
        x = augment(images[idx].float(), torch.Generator().manual_seed(args.seed * 1_000_003 + step))
        return F.cross_entropy(net(x), labels[idx], label_smoothing=args.label_smoothing), args.batch_size, {}

    def on_save(step, loss):
        now, cpu = time.perf_counter(), time.process_time()
        times["wall"] += now - clock["wall"]
        times["cpu"] += cpu - clock["cpu"]
        clock.update(wall=now, cpu=cpu)
        times_path.write_text(json.dumps(times))
        _log(out, f"step {step}/{total} loss {loss:.4f} lr {opt.param_groups[0]['lr']:.4f} "
                  f"{times['cpu'] / 60:.1f} min CPU, {times['wall'] / 60:.1f} min wall")

    gen = torch.Generator().manual_seed(args.seed)  # unused by the batches (seeded per step), kept for resume
    run_steps(out, net, opt, gen, step_fn, steps=total, lr=args.lr, warmup=max(1, int(total * args.warmup_frac)),
              save_every=args.save_every, grad_clip=0.0, unit="img", final_ratio=0.0, on_save=on_save, progress=False)
    return finish(args, net, classes, times, command)


def finish(args: FeatureTrainArgs, net: CifarFeatureNet, classes: list[str], times: dict,
           command: str | None) -> Path:
    """Measure test accuracy, export fp16 + config.json + TRAINING.md to ``out`` (and ``export``)."""
    from .data import load_images

    out = Path(args.out)
    test_x, test_y, _ = load_images(args.data, "test", 32)
    test_x, test_y = subset(test_x, test_y, args.test_limit, args.seed)
    export_fp16(net, out / "model.safetensors")
    write_export(out, net, classes, float("nan"), 0, times, args, command)
    acc = accuracy(load_feature_net(out), test_x, test_y)  # the fp16 export, as users load it
    _log(out, f"test accuracy {acc:.4f} on {test_x.shape[0]} images (fp16 export)")
    for folder in filter(None, [out, args.export]):
        folder = Path(folder)
        if folder != out:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "model.safetensors", folder / "model.safetensors")
        write_export(folder, net, classes, acc, int(test_x.shape[0]), times, args, command)
    return out / "model.safetensors"


def write_export(folder: Path, net: CifarFeatureNet, classes: list[str], acc: float, n_test: int,
                 times: dict, args: FeatureTrainArgs, command: str | None) -> None:
    """config.json and TRAINING.md next to an exported ``model.safetensors``."""
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    meta = {"type": "vargen_cifar_features", "config": net.config.to_dict(), "classes": classes,
            "feature_dim": net.feature_dim, "test_accuracy": round(acc, 4), "test_images": n_test,
            "input": "float RGB in [0, 255], [B, 3, 32, 32]"}
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    cmd = command or "vargen train features " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in asdict(args).items() if v not in (None, 0, {}))
    (folder / "TRAINING.md").write_text(f"""# cifar10-features

A small CIFAR-10 classifier (narrow ResNet-9, {sum(p.numel() for p in net.parameters())} parameters,
{size_mb:.2f} MB as fp16 safetensors) trained by vargen. Its penultimate layer ({net.feature_dim}-d, after
global max-pool) gives features for FID / KID / precision-recall, its softmax gives the Inception-Score
analogue. Numbers computed with it are **measured with vargen's CIFAR-10 features**; they are not
Inception FID and are not comparable with published numbers.

- Test accuracy: **{acc * 100:.2f}%** on {n_test} CIFAR-10 test images, measured on this fp16 export
  (loaded back to fp32) after training.
- Training: {args.epochs} epochs, batch {args.batch_size}, SGD Nesterov momentum {args.momentum}, peak lr
  {args.lr} (one-cycle: {args.warmup_frac:.0%} linear warm-up, cosine to 0), weight decay {args.weight_decay},
  label smoothing {args.label_smoothing}, random crop (4 px reflect pad) + horizontal flip, seed {args.seed}.
- Training time: {times['cpu'] / 60:.1f} min of CPU time on {args.threads or torch.get_num_threads()} thread(s)
  ({times['wall'] / 60:.1f} min of wall time; the machine may have been shared).

Command:

```
{cmd}
```
""")


# ----------------------------------------------------------------------------------------------
# CLI: `vargen train features ...`
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m vargen.train.features --data ... --out ...`` (the options of ``vargen train features``)."""
    from ..cli import main as vargen_main

    return vargen_main(["train", "features", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
