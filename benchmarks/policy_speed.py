"""ZPRL policy (VIB on, diffusion head) vs stock LeRobot DiffusionPolicy with the same DiffusionConfig fields.

Measures, in one process and interleaved block by block:
  - select_action latency of a call that generates a new chunk (queues reset before each call),
  - training-step throughput (forward + backward + Adam step) on a fixed batch,
and prints median times and the ratios zprl / stock (targets: latency <= 1.05, throughput >= 0.95).

    uv run python benchmarks/policy_speed.py                       # CPU, 1 thread
    uv run python benchmarks/policy_speed.py --device cuda --bf16  # GPU with bf16 autocast
"""

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import fields

import torch
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

from zprl.policy import ZPRLPolicy, zprl_config_for


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both policies")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--env-batch", type=int, default=1, help="batch size of select_action (num envs)")
    parser.add_argument("--down-dims", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int, default=10)
    parser.add_argument("--z-dim", type=int, default=16)
    parser.add_argument("--dims", type=int, nargs=3, default=[9, 10, 7], metavar=("STATE", "ENV", "ACTION"))
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per policy and metric")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per policy (median reported)")
    parser.add_argument("--block", type=int, default=3, help="iterations per timed block")
    return parser.parse_args()


def build_policies(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    state_dim, env_dim, action_dim = args.dims
    zprl_config = zprl_config_for(
        state_dim,
        env_dim,
        action_dim,
        head="diffusion",
        bottleneck=True,
        z_dim=args.z_dim,
        down_dims=tuple(args.down_dims),
        horizon=args.horizon,
        num_inference_steps=args.num_inference_steps,
        device=args.device,
    )
    stock_config = DiffusionConfig(
        **{f.name: getattr(zprl_config, f.name) for f in fields(DiffusionConfig) if f.init}
    )
    torch.manual_seed(0)
    stock = DiffusionPolicy(stock_config).to(args.device)
    torch.manual_seed(0)
    zprl = ZPRLPolicy(zprl_config).to(args.device)
    return {"stock": stock, "zprl": zprl}


def make_batches(args: argparse.Namespace, config: DiffusionConfig) -> tuple[dict, dict]:
    state_dim, env_dim, action_dim = args.dims
    b, t = args.batch_size, config.n_obs_steps
    train = {
        "observation.state": torch.randn(b, t, state_dim),
        "observation.environment_state": torch.randn(b, t, env_dim),
        "action": torch.rand(b, config.horizon, action_dim) * 2 - 1,
        "action_is_pad": torch.zeros(b, config.horizon, dtype=torch.bool),
    }
    obs = {
        "observation.state": torch.randn(args.env_batch, state_dim),
        "observation.environment_state": torch.randn(args.env_batch, env_dim),
    }
    to = lambda d: {k: v.to(args.device) for k, v in d.items()}  # noqa: E731
    return to(train), to(obs)


def benchmark(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    policies = build_policies(args)
    train_batch, obs = make_batches(args, policies["zprl"].config)
    optimizers = {name: torch.optim.Adam(p.get_optim_params(), lr=1e-4) for name, p in policies.items()}
    autocast = lambda: torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)  # noqa: E731
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def train_step(name: str) -> None:
        policy = policies[name].train()
        with autocast():
            loss, _ = policy.forward(train_batch)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    def act(name: str) -> None:
        policy = policies[name].eval()
        policy.reset()  # every call generates a fresh chunk
        with autocast():
            policy.select_action(dict(obs))

    def timed_block(fn: Callable[[str], None], name: str) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(args.block):
            fn(name)
        sync()
        return (time.perf_counter() - start) / args.block

    results: dict[str, dict[str, float]] = {}
    for metric, fn in (("select_action", act), ("train_step", train_step)):
        for name in policies:
            for _ in range(args.warmup):
                fn(name)
        samples: dict[str, list[float]] = {name: [] for name in policies}
        for r in range(args.repeats):
            order = list(policies) if r % 2 == 0 else list(reversed(policies))  # interleave, alternate order
            for name in order:
                samples[name].append(timed_block(fn, name))
        results[metric] = {name: statistics.median(times) for name, times in samples.items()}
    return results


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    results = benchmark(args)
    act, train = results["select_action"], results["train_step"]
    latency_ratio = act["zprl"] / act["stock"]
    throughput_ratio = train["stock"] / train["zprl"]  # (1 / t_zprl) / (1 / t_stock)
    print(
        f"device={args.device} bf16={args.bf16} threads={args.threads} down_dims={tuple(args.down_dims)} "
        f"horizon={args.horizon} ddim_steps={args.num_inference_steps} train_batch={args.batch_size} "
        f"env_batch={args.env_batch} z_dim={args.z_dim} repeats={args.repeats}x{args.block}"
    )
    header = f"{'metric':<34}{'stock':>12}{'zprl':>12}{'ratio':>9}{'target':>10}  ok"
    print(header)
    print("-" * len(header))
    rows = [
        ("select_action latency (ms/chunk)", act, 1e3, latency_ratio, "<= 1.05", latency_ratio <= 1.05),
        ("train step (ms/step)", train, 1e3, train["zprl"] / train["stock"], "", None),
        ("train throughput (steps/s)", {k: 1 / v for k, v in train.items()}, 1, throughput_ratio, ">= 0.95",
         throughput_ratio >= 0.95),
    ]
    for label, values, scale, ratio, target, ok in rows:
        flag = "" if ok is None else ("yes" if ok else "NO")
        print(f"{label:<34}{values['stock'] * scale:>12.2f}{values['zprl'] * scale:>12.2f}{ratio:>9.3f}"
              f"{target:>10}  {flag}")


if __name__ == "__main__":
    main()
