"""Work and memory are bounded before a call starts (vargen.budget): estimates, refusals, chunks, generate_iter."""
import itertools
import time

import pytest
import torch

import vargen
from vargen.budget import Footprint, MemoryBudget, parse_bytes
from vargen.samplers import get_sampler
from vargen.samplers.tree import proactive_tree, proactive_tree_size


@pytest.fixture(scope="module")
def pipe():
    return vargen.load("cifar10-llamagen")


def test_tree_size_is_counted_without_building_it():
    for window, width, depth, tail in itertools.product([1, 2, 5, 16], [1, 2, 4], [1, 2, 3, 4], [0, 2]):
        assert proactive_tree_size(window, width, depth, tail) == proactive_tree(window, width, depth, tail)[0].size


@pytest.mark.parametrize("spec", [dict(tree_width=1024), dict(tree_width=4096, tree_depth=4, window=32)])
def test_a_tree_too_large_for_memory_is_refused_before_it_is_built(spec):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"tree_width=\d+.*token tree of [\d,]+ nodes needs about .* choose a smaller"):
        get_sampler("sjd", **spec)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="tree_width=1024"):
        get_sampler("lantern++", tree_width=1024, gamma=8)


def test_a_batch_over_the_budget_is_refused_before_any_work(pipe):
    t0 = time.perf_counter()
    pipe.max_memory = "8GB"  # whatever this machine has
    try:
        with pytest.raises(ValueError, match=r"a batch of 20000 images needs about .* fit at once: .*per_row_seeds=True"):
            pipe.generate(["cat"] * 20000, sampler="ar")
    finally:
        pipe.max_memory = None
    assert time.perf_counter() - t0 < 10


def test_options_that_cannot_fit_one_image_name_the_options(pipe):
    pipe.max_memory = "1MB"
    try:
        with pytest.raises(ValueError, match=r"sjd:window=16 needs about .* per image .* more than the 1 MB .*max_memory"):
            pipe.generate([0], sampler="sjd:window=16")
    finally:
        pipe.max_memory = None


def test_over_the_budget_with_per_row_seeds_runs_in_chunks_with_the_same_images(pipe):
    whole = pipe.generate([0, 1, 2, 3, 4], sampler="ar", seed=3, per_row_seeds=True, decode=False)
    per_row = pipe.make_sampler("ar").footprint(pipe.model, pipe.conditions([0]), pipe.split_options({})[0]).per_row
    pipe.max_memory = int(2.5 * per_row)  # two images fit at once
    try:
        chunked = pipe.generate([0, 1, 2, 3, 4], sampler="ar", seed=3, per_row_seeds=True)
    finally:
        pipe.max_memory = None
    assert torch.equal(chunked.tokens, whole.tokens) and len(chunked.images) == 5
    assert chunked.stats.forward_passes == 3 * whole.stats.forward_passes  # three calls: 2 + 2 + 1 rows


def test_generate_iter_yields_chunks_equal_to_one_call(pipe):
    whole = pipe.generate([3, 1, 4, 1, 5], sampler="ar", seed=7, per_row_seeds=True)
    chunks = pipe.generate_iter([3, 1, 4, 1, 5], sampler="ar", seed=7, batch_size=2)
    outs = list(chunks)
    assert [o.tokens.shape[0] for o in outs] == [2, 2, 1]
    assert torch.equal(torch.cat([o.tokens for o in outs]), whole.tokens)
    assert [im.tobytes() for o in outs for im in o.images] == [im.tobytes() for im in whole.images]


def test_generate_iter_checks_everything_when_called(pipe):
    with pytest.raises(ValueError, match="class"):
        pipe.generate_iter([0] * 1000 + [99], sampler="ar")  # the bad condition is the last one
    with pytest.raises(ValueError, match="window"):
        pipe.generate_iter([0, 1], sampler="sjd:window=0")
    with pytest.raises(ValueError, match="batch_size"):
        pipe.generate_iter([0, 1], batch_size=0)
    with pytest.raises(ValueError, match="sequence of conditions"):
        pipe.generate_iter("cat")
    with pytest.raises(ValueError, match="empty"):
        pipe.generate_iter([])


def test_memory_settings_are_validated():
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes(1000) == 1000
    for bad in ("lots", "-1GB", "8 parsecs", True, 0, ""):
        with pytest.raises(ValueError, match="max_memory"):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="max_memory"):
        vargen.load("cifar10-llamagen", max_memory="plenty")
    assert vargen.load("cifar10-llamagen", max_memory="2GiB").max_memory == 2 * 2**30


def test_footprints_bound_the_caches_of_every_demo_family():
    """Each demo sampler's estimate holds at least the cache one image allocates (CFG rows included; MAR: its z)."""
    for name, sampler in (("cifar10-var", "var"), ("cifar10-var", "code"), ("cifar10-mar", "mar"),
                          ("cifar10-mar", "cspd"), ("cifar10-llamagen", "zipar"), ("cifar10-llamagen", "sd"),
                          ("cifar10-llamagen", "lantern")):
        p = vargen.load(name)
        call = p._prepare(sampler, False, {})
        rows = p._fitting_rows(call, p.conditions([0]))
        assert rows >= 1 and call.footprint.per_row > 0, (name, sampler)
        out = p.generate([0], sampler=sampler, decode=False)
        held = out.stats.kv_cache_bytes  # one image's cache, CFG rows included (zipar does not report it; MAR has none)
        if held is None and hasattr(call.model, "prefill"):
            held = call.model.new_cache(2).nbytes
        if hasattr(call.model, "seq_len"):  # MAR: the encoder-decoder's z of every position, both CFG rows
            held = 2 * call.model.seq_len * call.model.config.decoder_embed_dim * 4
        assert call.footprint.per_row >= held > 0, (name, sampler, call.footprint.per_row, held)


def test_a_budget_names_its_source():
    fp = Footprint().add("a cache", 10**6)
    assert MemoryBudget(torch.device("cpu"), 5 * 10**6).rows(fp, "x") == 5
    with pytest.raises(ValueError, match=r"x needs about 1 MB per image \(a cache 1 MB\), more than the 500 kB .*max_memory"):
        MemoryBudget(torch.device("cpu"), 5 * 10**5).rows(fp, "x")


def test_cli_refuses_a_batch_or_options_over_the_budget_before_any_work(tmp_path, capsys):
    from vargen.cli import main

    out = tmp_path / "samples"
    assert main(["generate", "--sampler", "ar", "--per-class", "2000", "--batch-size", "20000", "--max-memory", "20MB",
                 "--threads", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 20000: at most" in err[0] and "--max-memory" in err[0], err
    assert not list(out.glob("*.png"))
    assert main(["generate", "--sampler", "ar", "--per-class", "1", "--batch-size", "3", "--max-memory", "20MB",
                 "--threads", "1", "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 10
    capsys.readouterr()
    assert main(["generate", "--sampler", "sjd", "--max-memory", "100kB", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "sjd needs about" in err[0] and "100 kB" in err[0], err
    assert main(["generate", "--max-memory", "lots", "--out", str(tmp_path / "c")]) == 2
    assert "max_memory must be a size" in capsys.readouterr().err


def test_the_app_refuses_options_too_large_for_memory_before_any_work(pipe):
    from vargen.app import compare
    from vargen.samplers.spec import SamplerSpec

    pipe.max_memory = "1MB"
    try:
        with pytest.raises(ValueError, match=r"sjd:window=16 needs about .* per image"):
            compare.prepare(pipe, "cifar10-llamagen", "cat", SamplerSpec("sjd"), {"window": 16}, {}, 0, 1)
    finally:
        pipe.max_memory = None
    assert compare.prepare(pipe, "cifar10-llamagen", "cat", SamplerSpec("sjd"), {"window": 16}, {}, 0, 1).batch == 1
