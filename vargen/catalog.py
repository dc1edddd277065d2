"""What models exist: the shipped demos (with their size on disk), the official names (with what they download)
and the transformers image LMs vargen adapts. ``vargen models``, the help texts and the app read this one list."""
from __future__ import annotations

from dataclasses import dataclass

from . import zoo

FAMILY_LABELS = {"llamagen": "LlamaGen", "var": "VAR", "mar": "MAR", "cosmos": "Cosmos (video)",
                 "janus": "Janus / Janus-Pro", "emu3": "Emu3", "chameleon": "Lumina-mGPT / Anole (Chameleon)"}
PROMPT_FAMILIES = "Janus / Janus-Pro, Emu3, Lumina-mGPT / Anole"

# hub ids in transformers' format that load with the [hf] extra (any save_pretrained folder of these works too)
HUB_EXAMPLES = {"deepseek-community/Janus-Pro-1B": "janus", "deepseek-community/Janus-Pro-7B": "janus",
                "BAAI/Emu3-Gen-hf": "emu3", "Alpha-VLLM/Lumina-mGPT-7B-768": "chameleon",
                "leloy/Anole-7b-v0.1-hf": "chameleon"}
_PARTS = ("model", "tokenizer", "draft", "refiner")


def family_label(kind: str) -> str:
    return FAMILY_LABELS.get(kind, kind)


@dataclass(frozen=True)
class Demo:
    """A demo pipeline shipped in the package: it works offline."""

    name: str
    kind: str
    parts: tuple[str, ...]  # the zoo folders it reads (its model, tokenizer, companions)

    @property
    def megabytes(self) -> float:
        folders = {zoo.ZOO_DIR / self.name, *(zoo.ZOO_DIR / p for p in self.parts)}
        return sum(f.stat().st_size for d in folders if d.is_dir() for f in d.rglob("*") if f.is_file()) / 2**20


@dataclass(frozen=True)
class Official:
    """An official checkpoint by name: files on the Hugging Face hub, or local copies of them."""

    name: str
    kind: str
    downloads: tuple[tuple[str, str], ...]  # (repo, file)

    @property
    def cached(self) -> bool:
        """Every file is in the local hub cache already (so it loads offline)."""
        from huggingface_hub import try_to_load_from_cache

        return all(isinstance(try_to_load_from_cache(repo, file), str) for repo, file in self.downloads)

    def urls(self) -> list[str]:
        return [f"https://huggingface.co/{repo}/blob/main/{file}" for repo, file in self.downloads]


def demos() -> list[Demo]:
    out = []
    for name in zoo.shipped_names():
        path = zoo.ZOO_DIR / name / "pipeline.json"
        if path.is_file():
            spec = zoo.read_json(path)
            out.append(Demo(name, spec["kind"], tuple(spec[k] for k in _PARTS if spec.get(k))))
    return out


def demo_names() -> list[str]:
    return [d.name for d in demos()]


def officials() -> list[Official]:
    out = []
    for name, spec in zoo.OFFICIAL.items():
        files = [spec[k] for k in ("checkpoint", "tokenizer_checkpoint", "decoder_checkpoint") if k in spec]
        out.append(Official(name, spec["kind"], tuple((f["repo"], f["file"]) for f in files)))
    return out


def official(name: str) -> Official | None:
    return next((o for o in officials() if o.name == name), None)


def is_demo(name: str) -> bool:
    return (zoo.ZOO_DIR / name / "pipeline.json").is_file() if "/" not in name and name else False


def model_help(default: str | None = None) -> str:
    """The ``--model`` help text: every name that exists."""
    text = (f"a shipped demo ({', '.join(demo_names())}), an official name ({', '.join(sorted(zoo.OFFICIAL))}), a "
            f"folder with pipeline.json, or a transformers {PROMPT_FAMILIES} folder or hub id (e.g. "
            f"{next(iter(HUB_EXAMPLES))}); `vargen models` lists them")
    return text + (f" (default {default})" if default else "")
