"""Video pipelines end to end on tiny random models: load from folders, generate clips through the API and
the CLI (GIFs, film strips, statistics), context from scene seeds, from video tensors and from files."""
import json

import pytest
import torch
from PIL import Image

from helpers import tiny_video_folder
from vargen import load
from vargen.families.cosmos import scene_clips
from vargen.cli import main

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_video_folder(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def pipe(folder):
    return load(folder)


def test_generate_clips_from_scene_seeds(pipe):
    assert pipe.video and pipe.kind == "cosmos" and pipe.default_sampler.startswith("sjd")
    out = pipe.generate([3, 5], seed=0)
    assert out.tokens.shape == (2, 2 * 16) and out.context.shape == (2, 16)
    assert len(out.videos) == 2 and len(out.videos[0]) == 9 and out.videos[0][0].size == (16, 16)
    assert out.images[0].size == (9 * 16, 16)  # a film strip per clip
    # the context is the scene's first frame, encoded
    clip = scene_clips(pipe, [3])
    assert torch.equal(out.context[:1], pipe.tokenizer.encode(clip)[:, :1].flatten(1))


@pytest.mark.parametrize("sampler", ["sjd:window=6,init=temporal_sample,coupled=true", "gsd:window=6,group_size=3",
                                     "lantern:gamma=3,k=4,delta=0.2"])
def test_context_video_and_rows_alone(pipe, sampler):
    """Context given as video (one frame each, padded by repetition to a chunk); every row of a batch gets the
    clip it gets alone. LANTERN's neighbourhoods come from the DV's FSQ codes; its drafter here is the model."""
    clips = scene_clips(pipe, [1, 2, 4])
    first = clips[:, :, :1]
    extra = {"draft": pipe.model} if sampler.startswith("lantern") else {}
    batch = pipe.generate(first, sampler=sampler, seed=4, per_row_seeds=True, decode=False, **extra)
    for i in range(3):
        alone = pipe.generate(first[i : i + 1], sampler=sampler, seed=4 + i, per_row_seeds=True, decode=False, **extra)
        assert torch.equal(alone.tokens[0], batch.tokens[i])
    if sampler.startswith("lantern"):
        book = pipe.make_sampler("lantern", gamma=3, k=4, delta=0.2, **extra).rule.codebook
        assert torch.equal(book() if callable(book) else book, pipe.tokenizer.codebook())


def test_bad_conditions(pipe):
    with pytest.raises(ValueError, match=r"\[B, 3, f, 16, 16\]"):
        pipe.generate(torch.zeros(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="cfg_scale"):
        pipe.generate([0], cfg_scale=2.0)
    with pytest.raises(ValueError, match="empty"):
        pipe.generate([])


def test_cli_writes_gifs_and_strips(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--model", str(folder), "--scene", "0", "7", "--out", str(out), "--grid",
                 str(tmp_path / "grid.png")]) == 0
    summary = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert summary["videos"] == 2 and summary["frames"] == 9 and summary["forward_passes"] >= 1
    gif = Image.open(out / "0001_scene-7.gif")
    assert gif.n_frames == 9 and gif.size == (16, 16)
    assert Image.open(tmp_path / "grid.png").size == (9 * 16, 2 * 16)


def test_cli_context_files(folder, tmp_path, capsys):
    Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "out"
    assert main(["generate", "--model", str(folder), "--context", str(tmp_path / "red.png"), "--out", str(out),
                 "--sampler", "ar"]) == 0
    assert (out / "0000_red.gif").is_file()
    assert main(["generate", "--model", str(folder), "--class-id", "1", "--out", str(out)]) == 2
    assert "video model" in capsys.readouterr().err


def test_official_cosmos_names_fail_offline_naming_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"model\.pt.*nvidia/Cosmos-1\.0-Autoregressive-4B"):
        load("Cosmos-1.0-Autoregressive-4B")


def test_torchscript_tokenizer_halves_load_only_when_trusted(tmp_path):
    """The released tokenizer ships as TorchScript (encoder.jit / decoder.jit): loading one runs its code, so it
    takes trusted=True; its state dict then loads strictly into the eager half."""
    import warnings

    from helpers import TINY_DV
    from vargen.tokenizers.cosmos_dv import DiscreteVideoTokenizer, DVConfig, load_dv_tokenizer

    torch.manual_seed(3)
    dv = DiscreteVideoTokenizer(DVConfig(**TINY_DV)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(dv.decoder_half(), torch.zeros(1, 3, 4, 4, dtype=torch.long)).save(str(tmp_path / "decoder.jit"))
    with pytest.raises(ValueError, match="runs its own code"):
        load_dv_tokenizer(TINY_DV, decoder=str(tmp_path / "decoder.jit"))
    with pytest.warns(UserWarning, match="TorchScript"):
        again = load_dv_tokenizer(TINY_DV, decoder=str(tmp_path / "decoder.jit"), trusted=True)
    torch.testing.assert_close(again.decoder.conv_out[0].conv3d.weight, dv.decoder.conv_out[0].conv3d.weight)
