"""Per-step overhead of each gradient-clipping policy relative to no clipping.

Trains a ~1M-parameter residual MLP with every method of ``policies.clipping.CLIP_METHODS``
(forward, backward, clip, optimizer step) and prints a Markdown table: milliseconds per step,
milliseconds inside the clip call, the step time relative to ``none``, and the clip overhead:
the extra time inside the clip call (over ``none``, which only measures the norm) as a fraction
of a ``none`` step. The last column is the steadier one on a busy machine, since it times
only the clip call.

To damp noise on a shared machine, the policies take turns: each of ``--rounds`` rounds runs
``--steps / --rounds`` steps of every policy, and a policy's figure is the median over rounds.

    python bench/bench_clipping.py --steps 200
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from policies import CLIP_METHODS, build_clip_policy

CONFIGS = {
    "none": {"method": "none"},
    "norm": {"method": "norm", "max_norm": 1.0},
    "value": {"method": "value", "clip_value": 0.01},
    "agc": {"method": "agc", "clipping": 0.01},
    "autoclip": {"method": "autoclip", "percentile": 10.0},
    "zclip": {"method": "zclip"},
}
assert set(CONFIGS) == set(CLIP_METHODS)


class ResidualMLP(nn.Module):
    def __init__(self, inputs: int = 64, width: int = 512, depth: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
            for _ in range(depth)
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class Runner:
    """One policy's model, optimizer and clip, stepping on a fixed batch."""

    def __init__(self, method: str, device: torch.device, batch: int) -> None:
        torch.manual_seed(0)
        self.model = ResidualMLP().to(device)
        self.clip = build_clip_policy(CONFIGS[method], self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, 64, generator=generator).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=generator).to(device)
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, steps: int) -> tuple[float, float]:
        """Seconds per step, and of them seconds inside the clip call."""
        clip_seconds = 0.0
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.sync()
            clip_start = time.perf_counter()
            self.clip(self.model.parameters())
            self.sync()
            clip_seconds += time.perf_counter() - clip_start
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        return (time.perf_counter() - start) / steps, clip_seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per policy")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per policy")
    parser.add_argument("--rounds", type=int, default=10, help="turns the policies take")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    runners = {method: Runner(method, device, args.batch) for method in CONFIGS}
    parameters = sum(p.numel() for p in runners["none"].model.parameters())
    for runner in runners.values():
        runner.run(args.warmup)
    step_times: dict[str, list[float]] = {method: [] for method in runners}
    clip_times: dict[str, list[float]] = {method: [] for method in runners}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for method, runner in runners.items():
            step, clip = runner.run(per_round)
            step_times[method].append(step)
            clip_times[method].append(clip)

    print(
        f"# {parameters:,} parameters, batch {args.batch}, {device}, {args.threads} thread(s), "
        f"{per_round * args.rounds} steps per policy, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    baseline_step = statistics.median(step_times["none"])
    baseline_clip = statistics.median(clip_times["none"])
    print("| policy | ms/step | ms in clip call | step time vs none | clip overhead vs none |")
    print("|---|---:|---:|---:|---:|")
    for method in runners:
        step = statistics.median(step_times[method])
        clip = statistics.median(clip_times[method])
        extra = (clip - baseline_clip) / baseline_step
        print(
            f"| {method} | {step * 1e3:.2f} | {clip * 1e3:.3f} | {step / baseline_step:.3f}x "
            f"| {extra:+.1%} |"
        )


if __name__ == "__main__":
    main()
