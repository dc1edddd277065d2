"""A bounded soak of the app (issue 33, item 6): a server on 127.0.0.1 in its own process takes a few hundred
mixed valid and invalid ``/generate`` requests; every request is answered (a result or an error) and the server's
resident memory stays flat after a warm-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the app needs gradio (pip install 'vargen[app]')")
gradio_client = pytest.importorskip("gradio_client", reason="the soak needs gradio_client")

TESTS = Path(__file__).resolve().parent
REQUESTS, WARM_UP = 300, 60
# after the warm-up: 2-4 MB in clean runs; keeping each request's enlarged images (about 0.1 MB) grows it 27 MB
RSS_GROWTH_LIMIT_MB = 15

SERVER = """
import sys, torch
torch.set_num_threads(1)
from helpers import tiny_gpt
from vargen.app import build_app
from vargen.pipeline import Pipeline
from vargen.samplers.base import SamplingConfig
from vargen.tokenizers.llamagen_vq import VQConfig, VQModel

vq = VQModel(VQConfig(codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                      z_channels=32, ch=32, num_res_blocks=1)).eval()
pipe = Pipeline("llamagen", tiny_gpt(vocab=16, grid=8, num_classes=3), vq, SamplingConfig(cfg_scale=2.0, top_k=0),
                ["plane", "car", "bird"], "tiny")
demo = build_app({"tiny": pipe}, max_queue=64)
_, url, _ = demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), prevent_thread_lock=True, quiet=True)
print(url, flush=True)
demo.block_thread()
"""

# (keywords, whether the request is valid): tiny runs of several samplers, and the mistakes people make
MIX = [
    (dict(condition="car", sampler="ar"), True),
    (dict(condition="bird", sampler="sjd", options="window=4", seed=3), True),
    (dict(condition="2: bird", sampler="zipar", options="window=4", batch_size=2), True),
    (dict(condition="plane", sampler="gsd", options="window=4"), True),
    (dict(condition="dog"), False),
    (dict(condition="car", options="window=0"), False),
    (dict(condition="car", sampler="var"), False),
    (dict(condition="car", batch_size=9), False),
    (dict(condition="car", seed=-1), False),
    (dict(model="no-such-model"), False),
    (dict(condition="car", options="window"), False),
    (dict(condition="car", top_p=2.0), False),
    (dict(condition="car", trust_checkpoint="yes", options=["window=4"]), False),  # JSON of the wrong types
]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "VARGEN_THREADS": "1", "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=TESTS)
    try:
        url = proc.stdout.readline().strip()  # the server prints its address once it listens
        assert url.startswith("http://127.0.0.1:"), f"the app did not start (exit {proc.poll()})"
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_request_is_answered_and_memory_stays_flat(server):
    proc, url = server
    client = gradio_client.Client(url, verbose=False, download_files=False)
    answered, wrong, rss = 0, [], {}
    start = time.perf_counter()
    try:
        for i in range(REQUESTS):
            kw, valid = MIX[i % len(MIX)]
            job = client.submit(**{"model": "tiny", "seed": i, **kw}, api_name="/generate")
            try:
                out = job.result(timeout=60)
                ok = out["baseline"]["images"] and out["accelerated"]["images"]
            except gradio_client.exceptions.AppError as err:
                ok = False
                if "Traceback" in str(err) or "failed:" in str(err):  # an unexpected exception, not bad input
                    wrong.append(str(err))
            answered += 1
            if bool(ok) != valid:
                wrong.append(f"request {i} {kw}: {'a result' if ok else 'an error'}")
            if i + 1 in (WARM_UP, REQUESTS):
                rss[i + 1] = rss_mb(proc.pid)
    finally:
        client.close()
    seconds = time.perf_counter() - start
    assert answered == REQUESTS and proc.poll() is None and not wrong, wrong[:5]
    growth = rss[REQUESTS] - rss[WARM_UP]
    print(f"{REQUESTS} requests in {seconds:.0f} s; VmRSS {rss[WARM_UP]:.0f} MB after {WARM_UP}, "
          f"{rss[REQUESTS]:.0f} MB at the end")
    assert growth < RSS_GROWTH_LIMIT_MB, f"VmRSS grew {growth:.0f} MB over {REQUESTS - WARM_UP} requests"
