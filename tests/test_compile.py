"""The compiled decode step: fullgraph (no graph breaks), static shapes (no recompiles while decoding), and the
same tokens as the eager path for every token sampler."""
import pytest
import torch

from helpers import tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.models.draft_head import DraftHead, DraftHeadConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(vocab=16, grid=4, seed=2, n_layer=1, dim=32)


def _samplers(model):
    draft = tiny_gpt(vocab=16, grid=4, seed=9, n_layer=1, dim=32)
    torch.manual_seed(0)
    head = DraftHead(DraftHeadConfig.from_target(model.config))
    return [("ar", {}), ("sjd", dict(window=4)), ("sjd", dict(window=4, coupled=True, init="vertical")),
            ("sjd", dict(window=4, coupled=True, init="horizontal_sample", sample_top=3)),
            ("gsd", dict(window=4, group_size=3)), ("sd", dict(draft=draft, gamma=2)), ("sd", dict(draft=head, gamma=2)),
            ("lantern", dict(draft=head, gamma=2, k=3)),
            ("sjd-pac", dict(window=4, tree_width=3)), ("lantern++", dict(draft=head, gamma=2, k=3, tree_width=2))]


def test_compiled_decoding_gives_the_eager_tokens_for_every_token_sampler(model):
    labels = torch.tensor([0, 1, 2])
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    for name, options in _samplers(model):
        sampler = get_sampler(name, **options)
        eager = sampler.sample(model, labels, config, torch.Generator().manual_seed(4))
        compiled = sampler.sample(model, labels, config, torch.Generator().manual_seed(4), compile=True)
        assert torch.equal(eager.tokens, compiled.tokens), (name, options)
        assert eager.stats.forward_passes == compiled.stats.forward_passes


def test_compiled_step_is_one_graph_reused_without_recompiling(model):
    """Decoding a second image with the same shapes compiles nothing new (static shapes), and fullgraph=True
    would have raised on any graph break."""
    from torch._dynamo.utils import counters

    labels = torch.tensor([1, 2])
    sampler = get_sampler("sjd", window=4)
    sampler.sample(model, labels, SamplingConfig(), torch.Generator().manual_seed(0), compile=True)
    before = dict(counters["stats"])
    out = sampler.sample(model, labels, SamplingConfig(), torch.Generator().manual_seed(1), compile=True)
    assert out.stats.forward_passes > 2
    assert counters["stats"].get("unique_graphs", 0) == before.get("unique_graphs", 0)


def test_compiled_step_follows_changed_weights():
    """The weights are frozen into the compiled graph (inductor ``freezing``; whether a stale graph would show
    depends on how the GEMMs were packed), so writing them in place (load_state_dict) must compile a fresh
    graph, whose tokens are the new weights' tokens."""
    from torch._dynamo.utils import counters

    model = tiny_gpt(vocab=16, grid=4, seed=5, n_layer=1, dim=32)
    other = tiny_gpt(vocab=16, grid=4, seed=6, n_layer=1, dim=32)
    model.requires_grad_(False)  # as loaded by vargen.load
    labels, sampler = torch.tensor([2]), get_sampler("ar")
    sampler.sample(model, labels, SamplingConfig(), torch.Generator().manual_seed(0), compile=True)
    graphs = counters["stats"].get("unique_graphs", 0)
    sampler.sample(model, labels, SamplingConfig(), torch.Generator().manual_seed(0), compile=True)
    assert counters["stats"].get("unique_graphs", 0) == graphs  # same weights: the graph is reused
    model.load_state_dict(other.state_dict())
    for seed in range(3):
        want = sampler.sample(other, labels, SamplingConfig(), torch.Generator().manual_seed(seed))
        got = sampler.sample(model, labels, SamplingConfig(), torch.Generator().manual_seed(seed), compile=True)
        assert torch.equal(want.tokens, got.tokens)
    assert counters["stats"].get("unique_graphs", 0) > graphs  # new weights: a new graph
