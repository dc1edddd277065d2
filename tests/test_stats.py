"""Stats: typed figures, the flat summary, and joining calls field by field."""
from __future__ import annotations

from dataclasses import fields

import torch

from vargen.samplers.stats import CSpDStats, DraftStats, MaskedStats, Stats


def _loop_stats(rows: int, steps: int, proposed: int, accepted: int, tv: float | None = None) -> Stats:
    s = Stats(forward_passes=steps, tokens=torch.full((rows,), 8), seconds=0.5 * rows, peak_memory_bytes=100 * rows,
              accepted=[torch.ones(rows, dtype=torch.long)] * steps, token_step=torch.zeros(rows, 8, dtype=torch.long),
              kv_cache_bytes=1000 * rows,
              draft=DraftStats(proposer="jacobi", acceptance="gsd", window=4, drafts_proposed=proposed,
                               drafts_accepted=accepted))
    if tv is not None:
        s.tv_bound = torch.full((rows,), tv, dtype=torch.float64)
        s.draft.slots_decided = 10 * rows
    return s


def test_summary_keys_are_the_field_names_and_hide_the_counts():
    s = _loop_stats(2, 4, proposed=10, accepted=4, tv=0.5)
    out = s.summary()
    assert out["draft_acceptance_rate"] == 0.4 and out["tv_per_decided_slot"] == 1.0 / 20
    assert (out["proposer"], out["acceptance"], out["window"], out["kv_cache_bytes"]) == ("jacobi", "gsd", 4, 2000)
    assert not {"drafts_proposed", "drafts_accepted", "slots_decided", "gamma", "auto_drafts", "tree_nodes"} & set(out)


def test_plain_ar_reports_no_acceptance_rate():
    s = _loop_stats(1, 8, proposed=0, accepted=0)
    assert s.draft_acceptance_rate is None and "draft_acceptance_rate" not in s.summary()


def test_concat_joins_field_by_field():
    a, b = _loop_stats(2, 3, proposed=10, accepted=5, tv=0.5), _loop_stats(1, 5, proposed=30, accepted=3, tv=1.0)
    j = Stats.concat([a, b])
    assert j.forward_passes == 8 and j.seconds == 1.5 and j.peak_memory_bytes == 200
    assert j.kv_cache_bytes == 2000  # the largest call's cache: calls run one after another never hold two
    assert j.tokens.shape == (3,) and j.token_step.shape == (3, 8) and j.tv_bound.shape == (3,)
    assert len(j.accepted) == 5 and j.accepted[4].tolist() == [0, 0, 1]  # the shorter call commits nothing later
    assert j.draft.window == 4 and j.draft.drafts_proposed == 40
    assert j.draft_acceptance_rate == 8 / 40  # from the joined counts, not a sum of rates
    assert j.tv_per_decided_slot == 2.0 / 30
    assert a.draft.drafts_proposed == 10  # the parts are not modified


def test_concat_of_cspd_rows():
    parts = [Stats(tokens=torch.full((1,), 4), seconds=1.0, mar=MaskedStats(num_iter=8, diffusion_steps=[10, 5]),
                   cspd=CSpDStats(test="exact", drafted=d, accepted_drafts=a, acceptance_rate_per_row=[a / d],
                                  log_phi_abs_max=m))
             for d, a, m in ((4, 2, 0.5), (6, 6, 0.25))]
    j = Stats.concat(parts)
    assert j.mar.diffusion_steps == [10, 5] and j.cspd.test == "exact"
    assert (j.cspd.drafted, j.cspd.accepted_drafts, j.cspd.log_phi_abs_max) == (10, 8, 0.5)
    assert j.cspd.acceptance_rate_per_row == [0.5, 1.0] and j.draft_acceptance_rate == 0.8
    assert j.summary()["diffusion_steps"] == "[10, 5]"


def test_every_figure_says_how_it_joins():
    from vargen.samplers import stats as module

    for cls in (Stats, *(getattr(module, n) for n in module.__all__ if n.endswith("Stats") and n != "Stats")):
        for f in fields(cls):
            assert f.metadata.get("merge") in module._MERGES, (cls.__name__, f.name)
            assert f.name in cls.__doc__, (cls.__name__, f.name)  # documented in the class docstring
