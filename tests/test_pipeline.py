"""One Pipeline for every family: every shipped pipeline with every sampler that applies, companions and
rule tables built once, outputs decoded from what the sampler computed, and bad options rejected before
any work."""
import numpy as np
import pytest
import torch

import vargen
from vargen import zoo
from vargen.families import FAMILIES

PIPELINES = [n for n in zoo.shipped_names() if zoo.pipeline_kind(n)]
FAST = {"mar": {"num_iter": 4}, "cspd": {"num_iter": 4, "num_draft": 2}}  # keep the MAR runs short


@pytest.fixture(scope="module")
def pipes():
    return {name: vargen.load(name) for name in PIPELINES}


def _cases():
    for name in PIPELINES:
        for sampler in FAMILIES[zoo.pipeline_kind(name)].samplers:
            yield name, sampler


@pytest.mark.parametrize("name,sampler", list(_cases()))
def test_every_shipped_pipeline_generates_with_every_applicable_sampler(pipes, name, sampler):
    pipe = pipes[name]
    assert sampler in pipe.applicable_samplers()
    extra = dict(FAST.get(sampler, {}))
    if sampler in ("sd", "lantern", "lantern++") and pipe.companion("draft") is None:  # no shipped drafter: the model drafts
        extra["draft"] = pipe.model
    out = pipe.generate([0, 1] if pipe.video else ["cat", "ship"], sampler=sampler, seed=0, **extra)
    assert len(out.images) == 2 and out.images[0].size[0] >= 16
    if pipe.video:
        assert len(out.videos) == 2 and len(out.videos[0]) == pipe.tokenizer.config.pixel_chunk_duration
    assert out.stats.forward_passes > 0 and out.stats.tokens is not None


def test_lantern_loads_the_head_once_and_builds_the_table_once(monkeypatch):
    from vargen.models import draft_head
    from vargen.samplers import acceptance

    loads, builds = [], []
    real_load, real_table = draft_head.DraftHead.from_folder.__func__, acceptance.neighbour_table
    monkeypatch.setattr(draft_head.DraftHead, "from_folder",
                        classmethod(lambda cls, *a, **k: loads.append(1) or real_load(cls, *a, **k)))
    monkeypatch.setattr(acceptance, "neighbour_table", lambda *a, **k: builds.append(1) or real_table(*a, **k))
    monkeypatch.setattr(acceptance, "_TABLES", {})
    pipe = vargen.load("cifar10-llamagen")
    for seed in range(3):
        pipe.generate(["cat"], sampler="lantern", seed=seed)
    assert loads == [1] and builds == [1]
    pipe.generate(["cat"], sampler="sd", seed=0)  # sd shares the head
    assert loads == [1]


def test_var_more_smooth_image_is_the_decoded_f_hat_of_the_sampler(pipes):
    pipe = pipes["cifar10-var"]
    out = pipe.generate(["cat", "dog"], sampler="var", seed=1, more_smooth=True)
    assert out.latents is not None
    own = pipe.decode(out)
    from_tokens = pipe.decode(out.tokens)  # re-deriving f_hat from the tokens loses the smoothing
    as_arrays = lambda ims: torch.stack([torch.tensor(np.asarray(im), dtype=torch.float32) for im in ims])  # noqa: E731
    assert torch.equal(as_arrays(out.images), as_arrays(own))
    assert (as_arrays(own) - as_arrays(from_tokens)).abs().mean() > 1.0


def test_decoding_does_not_depend_on_the_batch(pipes):
    pipe = pipes["cifar10-llamagen"]
    out = pipe.generate([0, 1, 2, 3], sampler="ar", seed=0, per_row_seeds=True)
    alone = pipe.generate([2], sampler="ar", seed=2, per_row_seeds=True)
    assert np.array_equal(np.asarray(out.images[2]), np.asarray(alone.images[0]))


@pytest.mark.parametrize("name,sampler,options,message", [
    ("cifar10-llamagen", "sjd", {"gamma": 4}, "sampler 'sjd' takes no option 'gamma'; it takes: acceptance, adapt_min_depth"),
    ("cifar10-llamagen", "ar", {"window": 16}, "sampler 'ar' takes no option 'window'"),
    ("cifar10-llamagen", "sjd", {"coupled": "maybe"}, "sjd: coupled: expected true/false/yes/no/1/0, got 'maybe'"),
    ("cifar10-llamagen", "sjd", {"coupled": 1}, "sjd: coupled must be true or false, got 1"),
    ("cifar10-llamagen", "sjd", {"window": True}, "sjd: window must be an integer"),
    ("cifar10-llamagen", "sjd", {"window": 100000}, "window=100000 exceeds the model's num_tokens (256)"),
    ("cifar10-llamagen", "sjd", {"cfg_schedule": "linear"}, "cfg_schedule does not apply to llamagen models"),
    ("cifar10-llamagen", "var", {}, "sampler 'var' does not apply to a LLAMAGEN pipeline"),
    ("cifar10-var", "var", {"cfg_interval": 3}, "cfg_interval does not apply to var models"),
    ("cifar10-var", "var", {"window": 16}, "sampler 'var' takes no option 'window'"),
    ("cifar10-mar", "mar", {"top_k": 5}, "top_k does not apply to mar models"),
    ("cifar10-mar", "cspd", {"test": "nope"}, "cspd: test must be one of exact, final_step, official"),
])
def test_wrong_options_are_clear_errors_before_any_work(pipes, monkeypatch, name, sampler, options, message):
    pipe = pipes[name]
    calls = []
    monkeypatch.setattr(pipe.model, "forward", lambda *a, **k: calls.append(1))  # any model work would show here
    with pytest.raises(ValueError) as err:
        pipe.generate(["cat"], sampler=sampler, seed=0, **options)
    assert message in str(err.value)
    assert not calls


def test_sampler_specs_round_trip_and_reject_unknown_options():
    from vargen.samplers import SamplerSpec

    spec = SamplerSpec.parse("sjd:window=16,coupled=yes,init=vertical")
    assert spec.options == {"window": 16, "coupled": True, "init": "vertical"}
    assert str(spec) == "sjd:coupled=true,init=vertical,window=16"
    assert SamplerSpec.parse(str(spec)) == spec
    assert SamplerSpec.parse("var:model=refiner").member == "refiner"
    assert SamplerSpec.parse("sjd:acceptance=lantern,k=8,delta=0.2").options["k"] == 8
    for bad, message in (("sjd:gamma=4", "takes no option 'gamma'"), ("sjd:window=2.5", "expected an integer"),
                         ("sjd:coupled=maybe", "expected true/false"), ("nope", "unknown sampler"),
                         ("sjd:window", "expected key=value"), ("sjd:acceptance=exact,k=8", "takes no option 'k'")):
        with pytest.raises(ValueError, match=message):
            SamplerSpec.parse(bad)


def test_a_specs_text_keeps_every_digit_of_a_float():
    """Found by tests/test_fuzz.py: ``%g`` printed prune_ratio=0.001953125 as 0.00195312, another sampler."""
    from vargen.samplers import SamplerSpec

    spec = SamplerSpec.parse("var:prune_ratio=0.001953125")
    assert str(spec) == "var:prune_ratio=0.001953125" and SamplerSpec.parse(str(spec)) == spec
    assert str(SamplerSpec.parse("var:prune_ratio=0.5,temperatures=1/0.1")) == "var:prune_ratio=0.5,temperatures=1/0.1"


def test_a_folder_option_in_a_spec_is_a_path_or_none():
    """Found by tests/test_fuzz.py: sd:draft= read the current folder ('. is not a model folder'), draft=none a
    folder named none."""
    from vargen.samplers import SamplerSpec

    with pytest.raises(ValueError, match="sd: draft needs a folder path, got nothing"):
        SamplerSpec.parse("sd:draft=")
    assert SamplerSpec.parse("sd:draft=none").options == {"draft": None}
    assert SamplerSpec.parse("sd:draft=runs/head").options == {"draft": "runs/head"}
