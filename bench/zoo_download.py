"""The zoo's download and conversion against the bare tools, in one run on one machine.

1. Download throughput of ``qscore_hf.zoo.download`` against ``curl`` fetching the same file from the same loopback
   HTTP server (``python -m http.server`` on 127.0.0.1, its own process), interleaved, best of ``--repeats`` each;
   target: ours / curl >= 0.9.
2. Time and peak memory (max RSS of a fresh process) of ``convert_checkpoint`` on a ResNet-50-sized file in MoCo v2's
   layout (query and key encoders, queue) against a bare ``torch.load(weights_only=True)`` + ``load_state_dict`` of
   the same file's query encoder into a torchvision ResNet-50.

    python bench/zoo_download.py [--size-mib 256] [--repeats 3] [--out bench/results/zoo_download_cpu.json]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import environment, save  # noqa: E402

from qscore_hf.zoo.download import download  # noqa: E402

_CONVERT = """
import resource, sys, time
import torch
from qscore_hf.convert import convert_checkpoint
start = time.perf_counter()
model = convert_checkpoint(sys.argv[1])
seconds = time.perf_counter() - start
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
_BARE = """
import resource, sys, time
import torch, torchvision
start = time.perf_counter()
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["state_dict"]
prefix = "module.encoder_q."
backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and ".fc." not in k}
model = torchvision.models.resnet50()
model.fc = torch.nn.Identity()
model.load_state_dict(backbone)
seconds = time.perf_counter() - start
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the loopback server on port {port} did not start")


def check(path: Path, sha256: str) -> None:
    """The downloaded copy is the served file (checked outside the timed part), then removed."""
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise RuntimeError(f"{path} differs from the served file")
    path.unlink()


def throughput(folder: Path, size_mib: int, repeats: int) -> dict:
    served = folder / "served"
    served.mkdir()
    (served / "file.bin").write_bytes(os.urandom(size_mib * 2**20))
    expected = hashlib.sha256((served / "file.bin").read_bytes()).hexdigest()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/file.bin"
    ours, curl = [], []
    try:
        wait_for(port)
        for i in range(repeats):
            target = folder / f"ours-{i}.bin"
            start = time.perf_counter()
            download(url, target, max_bytes=2 * size_mib * 2**20, progress=False)
            ours.append(time.perf_counter() - start)
            check(target, expected)
            target = folder / f"curl-{i}.bin"
            start = time.perf_counter()
            subprocess.run(["curl", "-sS", "-o", str(target), url], check=True)
            curl.append(time.perf_counter() - start)
            check(target, expected)
    finally:
        server.terminate()
        server.wait()
    best_ours, best_curl = min(ours), min(curl)
    return {
        "file_mib": size_mib,
        "seconds_ours": [round(s, 3) for s in ours],
        "seconds_curl": [round(s, 3) for s in curl],
        "mib_per_s_ours_best": round(size_mib / best_ours, 1),
        "mib_per_s_curl_best": round(size_mib / best_curl, 1),
        "throughput_ratio_ours_over_curl": round(best_curl / best_ours, 3),
        "target_ratio": 0.9,
    }


def conversion(folder: Path) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    query = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet50().state_dict().items() if "fc" not in k}
    query |= {"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.0.bias": torch.zeros(2048),
              "module.encoder_q.fc.2.weight": torch.randn(128, 2048), "module.encoder_q.fc.2.bias": torch.zeros(128)}  # fmt: skip
    state = query | {k.replace("encoder_q", "encoder_k"): v.clone() for k, v in query.items()}
    state |= {"module.queue": torch.randn(128, 65536), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = folder / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, path)
    results = {"file_mib": round(path.stat().st_size / 2**20, 1)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name, code in (("convert_checkpoint", _CONVERT), ("bare_torch_load", _BARE)):
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True)
        seconds, max_rss_kib = out.stdout.split()
        results[name] = {"seconds": round(float(seconds), 2), "peak_rss_mib": round(int(max_rss_kib) / 1024, 1)}
    results["time_ratio"] = round(results["convert_checkpoint"]["seconds"] / results["bare_torch_load"]["seconds"], 2)
    results["peak_rss_ratio"] = round(
        results["convert_checkpoint"]["peak_rss_mib"] / results["bare_torch_load"]["peak_rss_mib"], 2
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the served file (default: 256)")
    parser.add_argument("--repeats", type=int, default=3, help="downloads per tool (default: 3)")
    parser.add_argument("--skip-conversion", action="store_true", help="only the download throughput")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here too")
    args = parser.parse_args()
    result = environment("zoo_download")
    with tempfile.TemporaryDirectory() as tmp:
        result["download"] = throughput(Path(tmp), args.size_mib, args.repeats)
        if not args.skip_conversion:
            result["conversion"] = conversion(Path(tmp))
    save(result, args.out)


if __name__ == "__main__":
    main()
