"""The command line a newcomer meets first: --version, models, samplers (families, a pipeline's defaults), errors
that name the closest names, help texts that list what exists, and no gradio outside `vargen app`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vargen.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vargen {version('vargen')}"


def test_models_lists_demos_with_sizes_official_names_with_downloads_and_transformers_models(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    demos, officials, hub = out.split("\n\n")
    assert "offline" in demos.splitlines()[0]
    for name, family in (("cifar10-llamagen", "LlamaGen"), ("cifar10-var", "VAR"), ("cifar10-mar", "MAR"),
                         ("bouncing-cosmos", "Cosmos (video)")):
        line = next(line for line in demos.splitlines() if line.split()[0] == name)
        assert family in line and " MB" in line
        assert 1 < float(line.split(" MB")[0].split()[-1]) < 50
    line = next(line for line in officials.splitlines() if line.split()[0] == "llamagen-c2i-B-256")
    assert "LlamaGen" in line and "FoundationVision/LlamaGen/c2i_B_256.pt" in line and "vq_ds16_c2i.pt" in line
    assert "nvidia/Cosmos-1.0-Autoregressive-4B/model.pt" in officials and "--checkpoint" in officials
    assert "deepseek-community/Janus-Pro-1B" in hub and "Lumina-mGPT / Anole" in hub


def test_samplers_shows_the_families_each_applies_to(capsys):
    code, out, _ = run(capsys, "samplers")
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert code == 0 and "applies to" in rows["sampler"]
    assert "LlamaGen" in rows["sjd"] and "Emu3" in rows["sjd"] and "VAR" not in rows["sjd"]
    assert rows["code"].split(None, 1)[1].strip() == "VAR" and rows["cspd"].split(None, 1)[1].strip() == "MAR"
    code, out, _ = run(capsys, "samplers", "sjd")
    assert out.startswith("sjd: applies to LlamaGen") and "window: int" in out


@pytest.mark.parametrize("model, line", [("cifar10-var", "draft_steps: int (>= 1), default 4"),
                                         ("cifar10-mar", "num_iter: int (>= 1, <= the model's seq_len), default 16")])
def test_samplers_with_a_model_shows_the_defaults_that_pipeline_runs(capsys, model, line):
    code, out, _ = run(capsys, "samplers", "--model", model)
    assert code == 0 and line in out
    assert next(o for o in out.splitlines() if line in o).endswith("the sampler's own is 8)" if "draft" in line
                                                                   else "the sampler's own is 64)")


def test_samplers_with_a_model_names_its_default_sampler(capsys):
    code, out, _ = run(capsys, "samplers", "--model", "cifar10-llamagen", "sjd")
    assert code == 0 and out.startswith("cifar10-llamagen (LlamaGen): default sampler sjd:window=16,coupled=true")
    code, _, err = run(capsys, "samplers", "--model", "cifar10-var", "sjd")
    assert code == 2 and "sampler 'sjd' does not apply to cifar10-var (VAR); it takes var, code" in err


@pytest.mark.parametrize("args, message", [
    (["samplers", "SJD"], "unknown sampler 'SJD'; did you mean 'sjd'?"),
    (["generate", "--sampler", "SJD"], "unknown sampler 'SJD'; did you mean 'sjd'?"),
    (["generate", "--sampler", "lanter"], "did you mean 'lantern' or 'lantern++'?"),
    (["generate", "--model", "cifar10-lamagen"], "unknown model 'cifar10-lamagen'; closest: cifar10-llamagen"),
])
def test_unknown_names_are_unknown_with_the_closest_names(capsys, tmp_path, args, message):
    code, _, err = run(capsys, *args, *(["--out", str(tmp_path)] if args[0] == "generate" else []))
    assert code == 2 and message in err and "does not apply" not in err


def test_help_texts_list_what_exists():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    helps = {a.dest: a.help for a in sub._actions}
    for name in ("cifar10-llamagen", "cifar10-var", "cifar10-mar", "bouncing-cosmos", "llamagen-c2i-B-256",
                 "Cosmos-1.0-Autoregressive-4B", "vargen models"):
        assert name in helps["model"], name
    for family in ("Janus", "Emu3", "Lumina-mGPT / Anole"):
        assert family in helps["prompt"], family


def test_app_flags_bind_locally_by_default():
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, [])
    args = build_parser().parse_args(["app", "--host", "0.0.0.0", "--port", "9000", "--share", "--model", "x"])
    assert (args.host, args.port, args.share, args.model) == ("0.0.0.0", 9000, True, ["x"])


def test_the_app_ships_in_the_package():
    from setuptools import find_packages

    assert "vargen.app" in find_packages(str(REPO), include=["vargen*"])


def test_generate_and_the_other_commands_import_no_gradio(tmp_path):
    script = ("import sys\nfrom vargen.cli import main\n"
              f"assert main(['generate', '--sampler', 'ar', '--class-id', 'cat', '--out', {str(tmp_path)!r}, "
              "'--threads', '1']) == 0\n"
              "for args in (['models'], ['samplers'], ['samplers', '--model', 'cifar10-var']): assert main(args) == 0\n"
              "import vargen.app.compare, vargen.app.render\n"
              "print('gradio loaded:', sorted(m for m in sys.modules if m.split('.')[0] == 'gradio'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "gradio loaded: []"
