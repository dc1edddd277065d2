"""The compile cache of the decode step: ``torch.compile`` with vargen's inductor settings, one compiled step per
model and weights version, reused across sampling calls."""
from __future__ import annotations

import types
import weakref

import torch

__all__ = ["inductor_settings", "compile_step", "compiled_target_step"]

_COMPILED: dict = {}  # (step, id(model), device) -> (model ref, weights version, compiled step)


def _weights_version(model) -> int:
    """Changes whenever a parameter or buffer is written in place (``load_state_dict``, an optimiser step)."""
    return sum(t._version for t in (*model.parameters(), *model.buffers()))


def inductor_settings(device, cudagraphs: bool = True) -> dict:
    """Inductor settings of the compiled decode step.

    * the weights are frozen into the graph as constants (``freezing``: pre-packed for the GEMMs);
    * CPU: GEMMs autotuned between inductor's C++ micro-GEMM template and MKL -- at decode sizes (a few rows)
      the template is several times faster than MKL's packed path;
    * CUDA: CUDA graphs (what ``mode="reduce-overhead"`` sets), one per (batch, window) shape.

    :func:`compile_step` sets them in the inductor config while dynamo compiles: given as
    ``torch.compile(options=...)`` they did not reach the compilation (torch 2.14: no autotuning, no freezing, the
    step as slow as with the defaults; demo model, 1-token forward, eager / compiled 2.0x through ``options``,
    3.7x set in the config).
    """
    settings = {"freezing": True}
    if torch.device(device).type == "cpu":
        settings.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    elif torch.device(device).type == "cuda" and cudagraphs:
        settings["triton.cudagraphs"] = True
    return settings


def compile_step(fn, device, cudagraphs: bool = True):
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` with :func:`inductor_settings` in force on every call
    that may compile (the first with new shapes or new objects). The parameters are not guarded: per-call guard
    checks on a small model cost a fifth of a compiled step (~0.3 ms of 1.6 ms on the demo model); callers key the
    compiled function on the model and its weights' version instead."""
    import torch._dynamo
    from torch._inductor import config as inductor_config

    # one graph per (batch, window) shape and per session: more than dynamo's default 8 per function
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False,
                             options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
    settings = [(getattr(inductor_config, k.split(".")[0]) if "." in k else inductor_config, k.split(".")[-1], v)
                for k, v in inductor_settings(device, cudagraphs).items()]

    seen: set = set()

    def run(*args):
        # the settings only matter while dynamo compiles, which happens on the first call with new shapes or new
        # objects (a new session); setting them costs ~0.2 ms (a seventh of the step), so later calls skip it
        key = tuple(tuple(a.shape) if torch.is_tensor(a) else id(a) for a in args)
        if key in seen:
            return compiled(*args)
        saved = [getattr(owner, name) for owner, name, _ in settings]
        try:
            for owner, name, value in settings:
                setattr(owner, name, value)
            out = compiled(*args)
        finally:
            for (owner, name, _), value in zip(settings, saved):
                setattr(owner, name, value)
        if len(seen) > 4096:
            seen.clear()
        seen.add(key)
        return out

    return run


def compiled_target_step(step, device, session, committer):
    """``step`` (the loop's :func:`~vargen.samplers.loop.target_step`) under ``torch.compile(fullgraph=True)`` (no
    graph breaks), one graph per shape, cached per model across calls (:func:`compile_step`). The weights are
    constants of the graph, so the step is keyed on the model object and its weights' version: a compiled step never
    serves another model, nor this one after its weights changed."""
    cuda = torch.device(device).type == "cuda"
    if cuda:  # CUDA graphs need the buffers written in place at fixed addresses
        cache = session.cache
        for t in [*getattr(cache, "k", []), *getattr(cache, "v", []), getattr(cache, "key_valid", None),
                  committer.seq, committer.token_step, committer.relaxed, committer.tv, committer.decided,
                  committer.proposed, committer.accepted]:
            if torch.is_tensor(t):
                torch._dynamo.mark_static_address(t)
    model = session.model
    key, version = (step, id(model), str(device)), _weights_version(model)
    entry = _COMPILED.get(key)
    if entry is None or entry[0]() is not model or entry[1] != version:
        # dynamo keeps compiled graphs per code object: a copy of the step's code per (model, weights) keeps
        # one model's graphs (whose parameters are neither guarded nor read at run time) from serving another
        code = step.__code__.replace(co_name=f"{step.__name__}_{len(_COMPILED)}_{version}")
        own = types.FunctionType(code, step.__globals__, code.co_name, step.__defaults__)
        fn = compile_step(own, device)
        entry = _COMPILED[key] = (weakref.ref(model), version, fn)
    return entry[2]
