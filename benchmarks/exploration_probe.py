"""Exploration-structure probe (no RL): random residuals in the bottleneck latent vs in action space.

On the frozen base policy, every chunk gets a uniform random u in (-1, 1)^d, either in the latent
(z' = mu + lambda * u, decoded and fed to the generator) or on the executable actions (a' = a + lambda_a * u),
with lambda_a calibrated so that both move the executed actions equally far from the base's
(mean |a_steered - a_base| per action element, unnormalised, same observation and generator noise). The
same displacement under a fresh draw of the generator noise is the scale a residual's effect must stand out
against (the residual's authority).
For each it reports success, jerk, mean |delta a| (``zprl.evaluation``) and the mean distance of the
executed action chunks (the policy's n_action_steps executable steps, flattened) to the nearest
demonstration chunk of the same length: the paper's claim is that latent exploration stays near the
demonstrations and smooth while action noise does not. Both steerings act on the same base
(``conditioning="latent"``: the VIB policy), so the u = 0 row is the reference for both.

    uv run python benchmarks/exploration_probe.py --policy outputs/pretrain/reach_biased/policy --task reach \\
        --demos data/reach_biased --latent-scale 1.0
    uv run python benchmarks/exploration_probe.py --policy outputs/pretrain/flow_z16/policy --task can \\
        --demos data/can_mh/demo.hdf5 --latent-scale 0.2 --action-scale 0.1 --episodes 50

``--demos``: a LeRobot dataset folder (``zprl data generate --task reach``) or a robomimic HDF5 file
(``data/<demo>/actions``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from zprl.envs import make_vector_env
from zprl.evaluation import Evaluator
from zprl.online.collector import SteeredAgent, SteeredRolloutPolicy
from zprl.online.steering import Steering, make_steering
from zprl.policy_io import env_kwargs_for, load_policy

REFERENCE_NOISE_SEED_OFFSET = 1_000_000


class RandomActor:
    """An "actor" whose deterministic action is uniform in (-1, 1)^d, fresh for every chunk (seeded)."""

    def __init__(self, action_dim: int, seed: int, zero: bool = False):
        self.action_dim, self.zero = action_dim, zero
        self.generator = torch.Generator().manual_seed(seed)

    def deterministic(self, rl_obs: torch.Tensor) -> torch.Tensor:
        u = torch.rand(len(rl_obs), self.action_dim, generator=self.generator) * 2 - 1
        return u.zero_() if self.zero else u.to(rl_obs)


class MeasuredSteering:
    """Wraps a steering: records each executed chunk (unnormalised), its mean |a - a_base| per element, and
    the same displacement that a fresh draw of the generator noise gives the base (the scale the residual's
    effect must stand out against)."""

    def __init__(self, steering: Steering, postprocessor, seed: int):
        self.steering, self.postprocessor = steering, postprocessor
        self.steps = steering.policy.action_chunk_slice
        # The agent draws its own generator noise from ``seed``: offset, or the "fresh" draw would equal it.
        self.noise_generator = torch.Generator().manual_seed(seed + REFERENCE_NOISE_SEED_OFFSET)
        self.chunks: list[np.ndarray] = []
        self.displacement: list[float] = []
        self.noise_displacement: list[float] = []

    def __getattr__(self, name):
        return getattr(self.steering, name)

    @torch.no_grad()
    def act(self, ctx, u):
        chunk = self.steering.act(ctx, u)
        base = self.steering.act(ctx, torch.zeros_like(u))  # same observation, same generator noise
        fresh_noise = torch.randn(ctx.noise.shape, generator=self.noise_generator).to(ctx.noise)
        resampled = self.steering.policy.generate(self.steering.base_conditioning(ctx.latent), fresh_noise)
        executed, reference, redrawn = (self.postprocessor(c[:, self.steps]).float().cpu().numpy()
                                        for c in (chunk, base, resampled))
        self.chunks.append(executed.reshape(len(executed), -1))
        self.displacement.append(float(np.abs(executed - reference).mean()))
        self.noise_displacement.append(float(np.abs(redrawn - reference).mean()))
        return chunk


def demo_chunks(path: Path, chunk_steps: int) -> np.ndarray:
    """Every window of ``chunk_steps`` consecutive demo actions, flattened: (N, chunk_steps * action_dim)."""
    if path.suffix in (".hdf5", ".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            episodes = [f["data"][demo]["actions"][:] for demo in f["data"]]
    else:
        frames = pd.concat(pd.read_parquet(p, columns=["episode_index", "frame_index", "action"])
                           for p in sorted((path / "data").glob("*/*.parquet")))
        if frames.empty:
            raise FileNotFoundError(f"No LeRobot data under {path}/data; pass a dataset folder or an HDF5 file.")
        frames = frames.sort_values(["episode_index", "frame_index"])
        episodes = [np.stack(group["action"].to_numpy()) for _, group in frames.groupby("episode_index")]
    windows = [np.lib.stride_tricks.sliding_window_view(actions, chunk_steps, axis=0).transpose(0, 2, 1)
               for actions in episodes if len(actions) >= chunk_steps]
    return np.concatenate(windows).reshape(-1, chunk_steps * episodes[0].shape[-1]).astype(np.float32)


def rollout(frozen, steering: Steering, actor: RandomActor, envs, episodes: int, seed: int) -> tuple:
    """Evaluate base + steering with the random actor; returns the EvalResult and the measuring wrapper."""
    measured = MeasuredSteering(steering, frozen[2], seed)
    agent = SteeredAgent(*frozen, measured, envs.num_envs, seed=seed)
    result = Evaluator(envs, episodes, seed=seed, progress=False).evaluate(SteeredRolloutPolicy(agent, actor))
    return result, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="pretrained policy folder (or pretraining .ckpt)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--demos", required=True, type=Path, help="LeRobot dataset folder or robomimic HDF5")
    parser.add_argument("--latent-scale", type=float, default=0.2, help="lambda of the latent residual")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--action-scale", type=float, default=None,
                        help="also probe the action residual at this lambda_a (e.g. the authors' 0.1), uncalibrated")
    parser.add_argument("--calibration-episodes", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--max-episode-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=300_000, help="episode and residual seeds")
    args = parser.parse_args()

    start = time.monotonic()
    frozen = load_policy(args.policy)
    policy = frozen[0]
    latent = make_steering("latent", policy, args.latent_scale, conditioning="latent", latent_centre="mean")
    envs = make_vector_env(args.task, args.num_envs, asynchronous=args.num_envs > 1,
                           max_episode_steps=args.max_episode_steps, **env_kwargs_for(policy.config))
    try:
        # Calibrate: the displacement of the latent residual at lambda, then lambda_a by the secant rule from a
        # small reference scale (the action residual is linear in lambda_a up to the [-1, 1] clamp), refined once.
        def displacement(steering: Steering) -> float:
            actor = RandomActor(steering.rl_action_dim, args.seed)
            return float(np.mean(rollout(frozen, steering, actor, envs, args.calibration_episodes,
                                         args.seed)[1].displacement))

        target = displacement(latent)
        action_scale = 0.05
        for _ in range(2):
            action_scale *= target / displacement(make_steering("action", policy, action_scale, conditioning="latent"))
        print(f"calibration: latent lambda {args.latent_scale} moves actions {target:.4f} on average "
              f"-> action lambda_a {action_scale:.4f}")
        action = make_steering("action", policy, action_scale, conditioning="latent")

        demos = demo_chunks(args.demos, policy.config.n_action_steps)
        nearest = NearestNeighbors(n_neighbors=1).fit(demos)
        probes = [("base (u = 0)", latent, True), ("latent z + lambda u", latent, False),
                  ("action a + lambda_a u", action, False)]
        if args.action_scale is not None:
            probes.append(("action, given lambda_a", make_steering("action", policy, args.action_scale,
                                                                   conditioning="latent"), False))
        rows = []
        for name, steering, zero in probes:
            result, measured = rollout(frozen, steering, RandomActor(steering.rl_action_dim, args.seed + 1, zero),
                                       envs, args.episodes, args.seed + 1)
            distance, _ = nearest.kneighbors(np.concatenate(measured.chunks))
            rows.append({"residual": name, "scale": 0.0 if zero else steering.scale,
                         "mean abs a - a_base": float(np.mean(measured.displacement)),
                         "fresh noise abs a - a_base": float(np.mean(measured.noise_displacement)),
                         "success": result.success_rate, "jerk": result.jerk, "mean abs delta a": result.action_delta,
                         "demo chunk distance": float(distance.mean())})
    finally:
        envs.close()
    table = pd.DataFrame(rows)
    latent_row, action_row = table.iloc[1], table.iloc[2]
    compared = table.columns.drop(["residual", "scale", "fresh noise abs a - a_base"])
    ratios = action_row[compared] / latent_row[compared]
    authority = latent_row["mean abs a - a_base"] / latent_row["fresh noise abs a - a_base"]
    print(f"\n{args.task}: {args.episodes} episodes per row, {len(demos)} demo chunks of "
          f"{policy.config.n_action_steps} steps, {time.monotonic() - start:.0f} s\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print("\nratio action / latent: " + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()))
    print(f"the latent residual moves actions {authority:.3g}x as far as a fresh draw of the generator noise")


if __name__ == "__main__":
    main()
