"""DiSA (diffusion step annealing, arXiv 2505.20297) on the ``mar`` and ``cspd`` samplers: the schedule, the zero
setting (the model's own step count at every step) reproducing the plain samplers token for token, CSpD's
verification with the heads of each drafted token's step count, and bad options refused up front."""
import copy

import pytest
import torch
from test_cspd import _one_thread, tiny_mar  # noqa: F401  (the module's one-thread fixture)

from vargen import SamplingConfig, get_sampler
from vargen.samplers.diffusion_head import annealed_steps, respaced

LABELS = torch.tensor([1, 2, 3])
CONFIG = SamplingConfig(temperature=0.9, cfg_scale=2.5)


@pytest.fixture(scope="module")
def target():
    return tiny_mar(0)  # 16 tokens, 10 diffusion steps


def test_schedules():
    assert annealed_steps(16, 50, 5) == [50, 47, 44, 41, 38, 35, 32, 29, 26, 23, 20, 17, 14, 11, 8, 5]
    cosine = annealed_steps(5, 50, 5, "cosine")
    assert cosine[0] == 50 and cosine[-1] == 5 and cosine[2] == 28 and cosine[1] > 50 - 45 / 4
    assert annealed_steps(1, 20, 4) == [20] and annealed_steps(3, 7, 7) == [7, 7, 7]
    with pytest.raises(ValueError, match="annealing must be one of"):
        annealed_steps(4, 10, 2, "exp")


def test_respaced_head_shares_the_network(target):
    head = target.diffloss
    assert respaced(head, head.num_sampling_steps) is head
    view = respaced(head, 4)
    assert view.num_sampling_steps == 4 and head.num_sampling_steps == 10 and view.net is head.net
    assert view.scheduler.timestep_map.tolist() == [0, 333, 666, 999]  # IDDPM's even respacing of 1000 steps


@pytest.mark.parametrize("spec", ["mar:num_iter=6", "cspd:num_iter=6,ratio=0.2,num_draft=2",
                                  "cspd:num_iter=6,ratio=0.2,num_draft=2,test=final_step",
                                  "cspd:num_iter=6,ratio=0.2,num_draft=2,test=official"])
@pytest.mark.parametrize("zero", ["diffusion_start=10,diffusion_end=10", "diffusion_start=10", "diffusion_end=10"])
def test_zero_setting_is_the_plain_sampler(target, spec, zero):
    """The model's own step count at every step: the plain sampler's tokens, exactly."""
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    name, options = spec.split(":")
    kw = {k: (v if not v.replace(".", "").isdigit() else (float(v) if "." in v else int(v)))
          for k, v in (o.split("=") for o in options.split(","))}
    if name == "cspd":
        kw["draft"] = draft
    disa = dict(kw, **{k: int(v) for k, v in (o.split("=") for o in zero.split(","))})
    plain = get_sampler(name, **kw).sample(target, LABELS, CONFIG, torch.Generator().manual_seed(0))
    zero_run = get_sampler(name, **disa).sample(target, LABELS, CONFIG, torch.Generator().manual_seed(0))
    assert torch.equal(plain.tokens, zero_run.tokens)
    assert zero_run.stats.mar.diffusion_steps == 10


def test_mar_anneals_and_records_the_steps(target):
    out = get_sampler("mar", num_iter=6, diffusion_start=10, diffusion_end=2).sample(
        target, LABELS, CONFIG, torch.Generator().manual_seed(0))
    assert out.stats.mar.diffusion_steps == [10, 8, 7, 5, 4, 2]  # 10 - 8 k / 5, rounded half up
    assert out.stats.mar.diffusion_steps_total == 36
    assert torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("test", ["exact", "final_step", "official"])
def test_cspd_accepts_a_draft_equal_to_the_target_at_every_step_count(target, test):
    """One draft step per verification: a draft equal to the target is accepted everywhere only if each window is
    verified with the heads of the step count it was drafted with."""
    sampler = get_sampler("cspd", draft=target, num_iter=8, ratio=0.2, num_draft=1, test=test, diffusion_start=10,
                          diffusion_end=3)
    s = sampler.sample(target, LABELS, CONFIG, torch.Generator().manual_seed(0)).stats
    assert s.mar.diffusion_steps == [10, 9, 8, 7, 6, 5, 4, 3]
    assert s.cspd.drafted > 0 and s.cspd.accepted_drafts == s.cspd.drafted


def test_cspd_window_spanning_step_counts_is_verified_in_groups(target, monkeypatch):
    """A window of several draft steps under DiSA holds tokens of several step counts: each is verified once,
    with the heads of its own count."""
    from vargen.samplers.cspd import CSpDSampler

    calls, windows = [], []
    verify = CSpDSampler._verify

    def spy(self, draft_head, target_head, d, window, *args):
        calls.append((draft_head.num_sampling_steps, target_head.num_sampling_steps, set(d.steps[window].tolist()),
                      window.clone()))
        return verify(self, draft_head, target_head, d, window, *args)

    monkeypatch.setattr(CSpDSampler, "_verify", spy)
    commit = CSpDSampler._commit
    monkeypatch.setattr(CSpDSampler, "_commit", staticmethod(lambda stats, where: (windows.append(where.clone()),
                                                                                    commit(stats, where))))
    get_sampler("cspd", draft=target, num_iter=8, ratio=0.2, num_draft=3, diffusion_start=10, diffusion_end=3).sample(
        target, LABELS, CONFIG, torch.Generator().manual_seed(0))
    assert any(len({c[0] for c in calls if (c[3] & w).any()}) > 1 for w in windows)  # a window of several counts
    for n_draft, n_target, counts, _ in calls:
        assert n_draft == n_target and counts == {n_draft}
    covered = sum(c[3].long() for c in calls)
    assert covered.max() == 1  # no token verified twice


def test_bad_options_are_refused_before_work(target):
    with pytest.raises(ValueError, match="annealing"):
        get_sampler("mar", diffusion_end=5, annealing="exp")
    with pytest.raises(ValueError, match="diffusion_start"):
        get_sampler("mar", diffusion_start=0)
    with pytest.raises(ValueError, match="exceed the head's 1000 training timesteps"):
        get_sampler("mar", num_iter=4, diffusion_start=2000).sample(target, LABELS, CONFIG)
