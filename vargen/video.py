"""Video files for the video pipelines: animated GIF (always, through Pillow), mp4 (through torchvision's
PyAV writer, when PyAV is installed), and context frames read from image / GIF files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

__all__ = ["save_gif", "save_mp4", "mp4_available", "read_context"]


def save_gif(frames: list[Image.Image], path: str | Path, fps: float = 8.0) -> None:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)


def mp4_available() -> bool:
    try:
        import av  # noqa: F401
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


def save_mp4(frames: list[Image.Image], path: str | Path, fps: float = 8.0) -> None:
    """H.264 through torchvision (PyAV); :func:`mp4_available` tells whether it can run."""
    import numpy as np
    from torchvision.io import write_video

    video = torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in frames]))
    write_video(str(path), video, fps=fps)


def read_context(path: str | Path, max_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Frames of an image or animated GIF as ``[3, f, H, W]`` in [-1, 1] (at most ``max_frames``), each resized
    (shorter side) and centre-cropped to ``size = (H, W)``, as the official pipeline prepares its input."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"context file not found: {path}")
    try:
        image = Image.open(path)
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(image)][:max_frames]
    except OSError as err:
        raise ValueError(f"{path}: not an image or GIF Pillow can read ({err})") from None
    H, W = size
    out = []
    for f in frames:
        scale = max(H / f.height, W / f.width)
        f = f.resize((max(W, round(f.width * scale)), max(H, round(f.height * scale))), Image.BICUBIC)
        left, top = (f.width - W) // 2, (f.height - H) // 2
        f = f.crop((left, top, left + W, top + H))
        out.append(torch.from_numpy(np.asarray(f, dtype=np.float32).copy()))
    return (torch.stack(out).permute(3, 0, 1, 2) / 127.5 - 1).clamp(-1, 1)
