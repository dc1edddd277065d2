"""Pictures of a result: enlarged images, animated GIFs, the acceptance map (each token coloured by the forward pass
that committed it) and data URLs for the API. No gradio here."""
from __future__ import annotations

import base64
import io
from math import isqrt

import torch
from PIL import Image, ImageDraw, ImageFont

from ..images import image_grid

MIN_IMAGE_SIDE = 192  # small demo images are enlarged (nearest neighbour) to at least this size
# viridis at 10 stops: early passes dark blue, late passes yellow
_PALETTE = [(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
            (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)]


def colour(x: float) -> tuple[int, int, int]:
    """The palette at ``x`` in [0, 1], linearly interpolated."""
    x = min(max(x, 0.0), 1.0) * (len(_PALETTE) - 1)
    i = min(int(x), len(_PALETTE) - 2)
    t = x - i
    a, b = _PALETTE[i], _PALETTE[i + 1]
    return tuple(round(a[c] + t * (b[c] - a[c])) for c in range(3))


def enlarge(image: Image.Image, min_side: int = MIN_IMAGE_SIDE) -> Image.Image:
    factor = max(1, -(-min_side // min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def gif_bytes(frames: list[Image.Image], fps: float = 8.0) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def acceptance_map(token_step: torch.Tensor, width: int, relaxed: torch.Tensor | None = None,
                   cell: int = 12) -> Image.Image:
    """One row's token grid coloured by the forward pass that committed each token.

    Tokens committed by the same pass form one region (no border between them); a white dot marks a
    token accepted only by a relaxed rule.
    """
    steps = token_step.detach().cpu().long().view(-1, width)
    flags = relaxed.detach().cpu().bool().view(-1, width) if relaxed is not None else None
    rows, cols = steps.shape
    first, last = int(steps.min()), int(steps.max())
    span = max(last - first, 1)
    img = Image.new("RGB", (cols * cell + 1, rows * cell + 1), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r in range(rows):
        for c in range(cols):
            s = int(steps[r, c])
            x0, y0 = c * cell, r * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour((s - first) / span))
            if c == 0 or int(steps[r, c - 1]) != s:
                draw.line([x0, y0, x0, y0 + cell], fill=(255, 255, 255))
            if r == 0 or int(steps[r - 1, c]) != s:
                draw.line([x0, y0, x0 + cell, y0], fill=(255, 255, 255))
            if flags is not None and flags[r, c]:
                m, rad = cell // 2, max(1, cell // 5)
                draw.ellipse([x0 + m - rad, y0 + m - rad, x0 + m + rad, y0 + m + rad], fill=(255, 255, 255))
    draw.line([0, rows * cell, cols * cell, rows * cell], fill=(255, 255, 255))
    draw.line([cols * cell, 0, cols * cell, rows * cell], fill=(255, 255, 255))
    return img


def with_legend(image: Image.Image, first: int, last: int) -> Image.Image:
    """Add a colour bar from the first to the last forward pass under ``image``."""
    text_h = max(12, image.width // 20)
    try:
        font = ImageFont.load_default(size=text_h)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    bar_h = max(8, text_h // 2)
    out = Image.new("RGB", (image.width, image.height + bar_h + text_h + 10), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    y = image.height + 4
    for x in range(image.width):
        draw.line([x, y, x, y + bar_h], fill=colour(x / max(image.width - 1, 1)))
    draw.text((0, y + bar_h + 1), f"pass {first}", fill=(0, 0, 0), font=font)
    label = f"pass {last}"
    draw.text((image.width - draw.textlength(label, font=font), y + bar_h + 1), label, fill=(0, 0, 0), font=font)
    return out


def token_layout(model, tokens: int) -> tuple[int, int] | None:
    """(rows, cols) the acceptance map draws ``tokens`` in: the model's token grid (video frames stacked), else a
    square; None where the tokens are not one grid (VAR's pyramid)."""
    grid = getattr(model, "grid", None)
    if grid is not None and grid[0] * grid[1] * grid[2] == tokens:
        return grid[0] * grid[1], grid[2]
    side = isqrt(tokens)
    return (side, side) if side * side == tokens and tokens > 1 else None


def acceptance_maps(stats, model) -> Image.Image | None:
    """Every row's acceptance map side by side, with one legend; ``None`` when there is no token grid."""
    steps = stats.token_step
    layout = token_layout(model, steps.shape[1]) if steps is not None else None
    if layout is None:
        return None
    height, width = layout
    cell = max(4, 2 * MIN_IMAGE_SIDE // max(height, width))
    relaxed = stats.relaxed
    maps = [acceptance_map(steps[b], width, None if relaxed is None else relaxed[b], cell) for b in range(steps.shape[0])]
    return with_legend(image_grid(maps, cols=min(4, len(maps))), int(steps.min()), int(steps.max()))
