"""Issue 33: clear one-line errors for options that used to mislead or end in a traceback, and statistics that
mean the same per image however many images a call makes (None where unknown or meaningless, never 0)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vargen
from vargen.runtime import check_device, check_dtype, configure_threads, usable_cores
from vargen.samplers.stats import Stats

REPO = Path(__file__).resolve().parents[1]
VARGEN = [sys.executable, "-m", "vargen.cli"]


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VARGEN_THREADS": "1"}
    return subprocess.run([*VARGEN, *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                          check=False)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr


@pytest.fixture(scope="module")
def llamagen():
    return vargen.load("cifar10-llamagen")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_dtype_names_are_accepted_and_a_wrong_one_is_named():
    assert check_dtype("float32") is torch.float32 and check_dtype("fp16") is torch.float16
    assert check_dtype("bf16") is torch.bfloat16 and check_dtype("float16") is torch.float16
    assert check_dtype("bfloat16") is torch.bfloat16 and check_dtype(torch.float16) is torch.float16
    pipe = vargen.load("cifar10-llamagen", dtype="float16")
    assert next(pipe.model.parameters()).dtype is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'float17'") as err:
        vargen.load("cifar10-llamagen", dtype="float17")
    assert "Invalid device" not in str(err.value)
    with pytest.raises(ValueError, match="not a floating-point"):
        check_dtype(torch.int64)


def test_meta_device_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot run on device 'meta'; it runs on cpu, cuda or mps"):
        check_device("meta")
    err = one_line_error(run_cli("generate", "--model", "cifar10-llamagen", "--device", "meta", "--per-class", "1",
                                 "--out", "/nonexistent-never-written"))
    assert "cannot run on device 'meta'" in err


def test_app_port_out_of_range_is_a_clear_error():
    pytest.importorskip("gradio")
    err = one_line_error(run_cli("app", "--port", "99999"))
    assert "--port must be a TCP port in 1..65535, got 99999" in err


def test_sampler_name_in_the_wrong_case_suggests_the_right_one(llamagen):
    with pytest.raises(ValueError, match=r"unknown sampler 'SJD'; did you mean 'sjd'\?"):
        llamagen.generate([0], sampler="SJD")
    err = one_line_error(run_cli("generate", "--model", "cifar10-llamagen", "--sampler", "SJD", "--per-class", "1",
                                 "--out", "/nonexistent-never-written"))
    assert "unknown sampler 'SJD'; did you mean 'sjd'?" in err and "does not apply" not in err


def test_an_option_in_the_spec_and_as_a_keyword_is_an_error(llamagen):
    with pytest.raises(ValueError, match=r"option 'window' given twice"):
        llamagen.generate([0], sampler="sjd:window=16", window=8)
    # once, either way, is fine
    out = llamagen.generate([0], sampler="sjd:window=16", seed=0)
    assert out.stats.draft.window == 16


def test_threads_are_bounded_by_the_cores():
    cores = usable_cores()
    with pytest.raises(ValueError, match=rf"threads=1000, but this process may run on {cores} core"):
        configure_threads(1000)
    err = one_line_error(run_cli("generate", "--model", "cifar10-llamagen", "--threads", "1000", "--per-class", "1",
                                 "--out", "/nonexistent-never-written"))
    assert "threads=1000" in err and f"1..{cores}" in err
    configure_threads(1)


# ----------------------------------------------------------------------------------------------
# Honest statistics
# ----------------------------------------------------------------------------------------------


def test_mar_figures_do_not_depend_on_the_image_count():
    pipe = vargen.load("cifar10-mar")
    seen = []
    for n in (1, 2, 3):
        s = pipe.generate(list(range(n)), sampler="mar:num_iter=4", seed=0).stats
        summary = s.summary()
        assert summary["mean_accepted"] is None and s.mean_accepted is None  # nothing is accepted in MAR
        seen.append(summary["tokens_per_forward"])
    assert seen[0] == seen[1] == seen[2] == pipe.model.seq_len / 4
    # rows sampled one call at a time, joined: still per image
    one = [pipe.generate([c], sampler="mar:num_iter=4", seed=c).stats for c in range(3)]
    joined = Stats.concat(one)
    assert joined.tokens_per_forward == pipe.model.seq_len / 4 and joined.forward_passes == 12


def test_var_reports_no_token_acceptance():
    pipe = vargen.load("cifar10-var")
    s = pipe.generate([0, 1], sampler="var", seed=0).stats
    summary = s.summary()
    assert summary["mean_accepted"] is None  # was 21.67: the mean scale size, not an acceptance
    K = len(pipe.model.patch_nums)
    assert summary["tokens_per_forward"] == round(float(s.tokens[0]) / K, 4)
    assert summary["forward_passes"] == K


def test_token_loop_tokens_per_forward_is_per_image_across_calls(llamagen):
    parts = [llamagen.generate([c], sampler="ar", seed=c).stats for c in range(3)]
    assert Stats.concat(parts).tokens_per_forward == pytest.approx(parts[0].tokens_per_forward)


def test_unknown_peak_memory_is_none_not_zero(llamagen):
    s = llamagen.generate([0], sampler="ar", seed=0).stats
    assert s.peak_memory_bytes is None and s.summary()["peak_memory_bytes"] is None
    var = vargen.load("cifar10-var").generate([0], sampler="var", seed=0).stats
    assert var.peak_memory_bytes_per_image is None
    assert Stats().summary()["tokens_per_row"] is None and Stats().summary()["tokens_per_forward"] is None


def test_the_summary_is_rounded_for_people_and_the_stats_keep_full_precision():
    import json

    from vargen.samplers.stats import AutoStats, CSpDStats, DraftStats

    s = Stats(forward_passes=7, tokens=torch.full((3,), 256), seconds=1.23456e-5,
              accepted=[torch.full((3,), 2)] * 7,
              draft=DraftStats(drafts_proposed=7, drafts_accepted=1),
              auto=AutoStats(auto_step_seconds={1: 0.0028651071619466306}))
    out = s.summary()
    assert s.tokens_per_forward == 256 / 7 and out["tokens_per_forward"] == 36.5714  # 4 decimals
    assert s.draft_acceptance_rate == 1 / 7 and out["draft_acceptance_rate"] == 0.1429
    assert out["seconds"] == 1.235e-05 and out["seconds_per_image"] == 4.115e-06  # 4 digits, never rounded to 0
    assert out["auto_step_seconds"] == "{1: 0.002865}"
    assert s.summary(precise=True)["tokens_per_forward"] == 256 / 7
    nan = Stats(tokens=torch.full((1,), 4), cspd=CSpDStats(log_phi_mean=float("nan"), log_phi_abs_max=float("inf")))
    assert nan.summary()["log_phi_mean"] is None and nan.summary(precise=True)["log_phi_abs_max"] is None
    json.dumps(nan.summary(), allow_nan=False)


def test_seconds_per_image_is_reported_for_every_family_and_joins_per_image():
    one, three = Stats(tokens=torch.full((1,), 8), seconds=1.0), Stats(tokens=torch.full((3,), 8), seconds=3.0)
    assert one.summary()["seconds_per_image"] == three.summary()["seconds_per_image"] == 1.0
    assert Stats.concat([one, three]).summary()["seconds_per_image"] == 1.0
    assert Stats().summary()["seconds_per_image"] is None  # no rows counted: unknown


def test_nothing_drafted_is_no_rate_not_zero():
    from vargen.samplers.stats import CSpDStats, DraftStats

    assert Stats(cspd=CSpDStats(drafted=0, accepted_drafts=0)).draft_acceptance_rate is None  # was 0.0
    lossy = Stats(tokens=torch.full((1,), 4), tv_bound=torch.zeros(1, dtype=torch.float64),
                  draft=DraftStats(slots_decided=0))
    assert lossy.tv_per_decided_slot is None and "tv_per_decided_slot" not in lossy.summary()  # was 0.0
    s = vargen.load("cifar10-mar").generate([0], sampler="cspd:num_iter=4,ratio=1.0", seed=0, decode=False).stats
    assert s.cspd.drafted == 0 and s.draft_acceptance_rate is None and s.cspd.acceptance_rate_per_row == [None]


def test_zipar_runs_a_schedule_and_reports_no_acceptance(llamagen):
    s = llamagen.generate([0], sampler="zipar:window=4", seed=0, decode=False).stats
    assert s.mean_accepted is None and s.summary()["mean_accepted"] is None  # was tokens_per_forward again
    assert s.tokens_per_forward > 1 and s.zipar.rows_in_parallel == 4
