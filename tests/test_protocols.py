"""The protocols are the contract: a toy model written from ``vargen/models/base.py`` alone samples with
every token sampler (and exactly, by enumeration), every shipped family passes the conformance checks of
``vargen.testing``, and the fast loops equal the reference loop token for token."""
import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import fixture_dir
from helpers import chi_square_pvalue, tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.decode import KVCache, LineSlots, layer_views, write_rows_
from vargen.models.base import TextCondition, TokenModel
from vargen.models.memory import decoder_row_bytes
from vargen.samplers.reference import reference_sample
from vargen.testing import check_continuous_model, check_scale_model, check_token_model, decode


class ToyModel:
    """A class-conditional next-token model written from the TokenModel protocol alone: the logits of
    token t+1 mix the class, the previous token, a running mean of every earlier token, and the position.

    Its "attention" is that mean: the cache (vargen's :class:`~vargen.decode.KVCache`, one layer, one head) holds
    ``w_ctx[token]`` per slot and the class row in slot 0, and a plan's mask says which slots each fed token averages,
    so chain windows, token trees, scattered positions and K/V eviction all come from the decode layer."""

    vocab_size = 4
    grid = (1, 2, 2)
    num_tokens = 4
    conditional = True
    device = torch.device("cpu")

    def __init__(self, seed=0, num_classes=3):
        g = torch.Generator().manual_seed(seed)
        V, N = self.vocab_size, self.num_tokens
        self.num_classes = num_classes
        self.w_cls = 2 * torch.randn(num_classes + 1, V, generator=g)  # the last row: unconditional
        self.w_prev = 2 * torch.randn(V, V, generator=g)
        self.w_ctx = torch.randn(V, V, generator=g)
        self.w_pos = torch.randn(N + 8, V, generator=g)

    def check_cond(self, cond) -> int:
        if not torch.is_tensor(cond) or cond.dim() != 1 or ((cond < 0) | (cond >= self.num_classes)).any():
            raise ValueError("class ids 0..num_classes-1")
        return cond.shape[0]

    def guidance_cond(self, cond):
        return torch.cat([cond, torch.full_like(cond, self.num_classes)])

    def new_cache(self, batch, max_len=None, eviction=None):
        slots = 1 + (max_len or self.num_tokens)  # slot 0 holds the class
        lines = None if eviction is None else LineSlots(eviction, 1, batch, slots - 1, self.device)
        return KVCache.allocate(batch, 1, 1, slots, self.vocab_size, torch.float32, self.device, prefix=1,
                                eviction=lines)

    def prefill(self, cond, cache):
        if cache.eviction is not None:
            cache.eviction.reset_()
        cache.k[0][:, 0, 0] = self.w_cls[cond]
        return self.w_cls[cond] + self.w_pos[0]

    def forward(self, tokens, plan, cache):
        fed = plan.tokens(tokens)
        views = layer_views(plan, cache)
        write_rows_(cache.k[0], *views.write(0), self.w_ctx[fed][:, None])
        mask = views.mask(0)[:, 0].float()  # [B, m, L]: the slots each entry averages
        image = mask.clone()
        image[..., 0] = 0  # the class slot is not an image token
        keys = cache.k[0][:, 0, : mask.shape[-1]]
        ctx = (image @ keys) / image.sum(-1, keepdim=True)
        if views.probe(0) is not None:  # eviction scores: the first entry's "attention"
            views.probe(0).add_(mask[:, 0] / mask[:, 0].sum(-1, keepdim=True))
        views.finish()
        logits = keys[:, :1] + self.w_prev[fed] + ctx + self.w_pos[plan.positions.clamp(max=self.w_pos.shape[0] - 1)]
        return plan.read(logits)

    __call__ = forward

    def logits(self, cond, tokens):
        cache = self.new_cache(tokens.shape[0])
        first = self.prefill(cond, cache)[:, None]
        rest = decode(self, tokens[:, : self.num_tokens - 1], torch.zeros(tokens.shape[0], dtype=torch.long), cache)
        return torch.cat([first, rest], 1)

    def codebook(self):
        return torch.eye(self.vocab_size)

    def memory_per_row(self, cond, fed, max_len):  # an upper bound, for vargen.budget: one layer, one head of V
        V = self.vocab_size
        return decoder_row_bytes(layers=1, dim=V, heads=1, kv_heads=1, head_dim=V, ffn=0, vocab=V, slots=1 + max_len,
                                 fed=fed, itemsize=4)


def toy_distribution(model, label, config):
    from vargen.samplers.base import cfg_mix, logits_to_probs

    seqs = torch.tensor(list(itertools.product(range(model.vocab_size), repeat=model.num_tokens)))
    labels = torch.full((seqs.shape[0],), label)
    logits = model.logits(labels, seqs)
    if config.uses_cfg:
        logits = cfg_mix(torch.cat([logits, model.logits(torch.full_like(labels, model.num_classes), seqs)]), config.cfg_scale)
    probs = logits_to_probs(logits, config.temperature, config.top_k or 0, config.top_p or 1.0).double()
    joint = probs.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)
    return {tuple(s.tolist()): float(pj) for s, pj in zip(seqs, joint)}


def test_toy_model_is_a_token_model_and_passes_the_checks():
    toy = ToyModel()
    assert isinstance(toy, TokenModel)
    report = check_token_model(toy, torch.tensor([0, 1, 2]), atol=1e-5)
    assert set(report) >= {"teacher_forcing", "chunked", "per_row", "rollback", "reuse", "cfg_rows"}


@pytest.mark.parametrize("name,options", [("ar", {}), ("sjd", dict(window=3)), ("sjd", dict(window=4, coupled=True)),
                                          ("sd", dict(gamma=2))])
def test_toy_model_samples_exactly_with_every_token_sampler(name, options):
    toy = ToyModel()
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    if name == "sd":
        options = dict(options, draft=ToyModel(seed=3))  # another toy as the draft model
    sampler = get_sampler(name, **options)
    out = sampler.sample(toy, torch.full((4000,), 1), config, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (4000, 4)
    assert chi_square_pvalue(out.tokens, toy_distribution(toy, 1, config)) > 1e-3
    passes_per_row = out.stats.token_step.max(1).values.float() + 1  # the pass that committed a row's last token
    if name == "ar":
        assert (passes_per_row == 4).all()
    else:  # rows finish in fewer target forwards than tokens (prefill included)
        assert passes_per_row.mean() < 3.9


def test_shipped_families_pass_the_conformance_checks():
    import vargen

    llamagen = vargen.load("cifar10-llamagen")
    check_token_model(llamagen.model, torch.tensor([0, 3, 9]))
    var = vargen.load("cifar10-var")
    for model in (var.model, var.member("refiner")):
        check_scale_model(model, torch.tensor([1, 7]))
    mar = vargen.load("cifar10-mar")
    for model in (mar.model, mar.member("draft")):
        check_continuous_model(model, torch.tensor([2, 5]))


def _t2i():
    d = fixture_dir("llamagen")
    from vargen.models.llamagen import GPT, GPTConfig, load_gpt_weights

    meta = json.loads((d / "fixtures.json").read_text())
    model = GPT(GPTConfig.from_dict(meta["gpt_t2i"]["model_args"])).eval()
    load_gpt_weights(model, str(d / "gpt_t2i_tiny.safetensors"))
    t = load_file(str(d / "outputs.safetensors"))
    return model, TextCondition(t["t2i.masked.caption"], t["t2i.masked.emb_masks"])


def test_llamagen_t2i_with_masked_captions_passes_the_checks():
    model, cond = _t2i()
    check_token_model(model, cond)


CONFIGS = [SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, cfg_scale=3.0, top_k=8),
           SamplingConfig(temperature=0.9, cfg_scale=2.0, cfg_interval=3, top_p=0.9)]


@pytest.mark.parametrize("config", CONFIGS)
def test_fast_ar_equals_the_reference_loop_c2i(config):
    model = tiny_gpt(vocab=16, grid=4, seed=4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    ref = reference_sample(model, labels, config, generator=torch.Generator().manual_seed(7)).tokens
    fast = get_sampler("ar").sample(model, labels, config, generator=torch.Generator().manual_seed(7)).tokens
    assert torch.equal(fast, ref)
    greedy = SamplingConfig(temperature=0.0, cfg_scale=config.cfg_scale, cfg_interval=config.cfg_interval)
    ref_g = reference_sample(model, labels, greedy).tokens
    for W in (2, 5, 16):
        assert torch.equal(get_sampler("sjd", window=W).sample(model, labels, greedy).tokens, ref_g)


def test_fast_ar_equals_the_reference_loop_t2i():
    model, cond = _t2i()
    model = model.double()
    cond = TextCondition(cond.features.double(), cond.mask)
    config = SamplingConfig(temperature=1.0, cfg_scale=4.0)
    ref = reference_sample(model, cond, config, generator=torch.Generator().manual_seed(1)).tokens
    assert torch.equal(get_sampler("ar").sample(model, cond, config, generator=torch.Generator().manual_seed(1)).tokens, ref)
    greedy = SamplingConfig(temperature=0.0, cfg_scale=4.0)
    assert torch.equal(get_sampler("sjd", window=5).sample(model, cond, greedy).tokens, reference_sample(model, cond, greedy).tokens)


def test_no_second_loop_left_in_the_package():
    """Every token sampler is the one loop with a proposer."""
    from vargen.samplers.loop import TokenSampler

    for name in ("ar", "sjd", "gsd"):
        assert isinstance(get_sampler(name), TokenSampler)
    draft = tiny_gpt(vocab=6, grid=2, n_layer=1)
    for name in ("sd", "lantern"):
        assert isinstance(get_sampler(name, draft=draft), TokenSampler)
