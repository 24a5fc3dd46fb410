"""How far the VIB path's conditioning and actions are from the raw path's, on training samples (no rollouts).

For each exported policy: the median squared relative error of decode(mu) against the embedding e, the mean
|delta a| between the generator's chunks conditioned on decode(mu) and on e with the same initial noise, and,
as the yardstick, the mean |delta a| between two noise draws on the raw path alone (normalised action units).
With the closed-loop success of both paths from ``quality.json`` next to each policy (benchmarks/pretrain_quality.py)
when it exists. Example:

    OMP_NUM_THREADS=1 uv run python benchmarks/vib_conditioning_gap.py --task can --data data/can_mh \\
        --filter-key expert+noisy --policies outputs/bench/paper_can_en/policy outputs/bench/posthoc_can_en/policy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from zprl.data.datamodule import RobomimicDataModule
from zprl.data.schema import OBS_PREFIX, OBS_STATE
from zprl.policy_io import load_policy


def conditioning_gap(policy, batch: dict[str, torch.Tensor], seed: int = 0) -> dict[str, float]:
    """Reconstruction error of decode(mu) and the action gaps it causes, on one normalised batch."""
    size = batch[OBS_STATE].shape[0]
    with torch.no_grad():
        latent = policy.encode_latent(batch)
        decoded = policy.decode_latent(latent.mu)
        noise = policy.sample_noise(size, torch.Generator().manual_seed(seed))
        other_noise = policy.sample_noise(size, torch.Generator().manual_seed(seed + 1))
        through_latent = policy.generate(decoded, noise=noise)
        raw = policy.generate(latent.e, noise=noise)
        raw_other_noise = policy.generate(latent.e, noise=other_noise)
    relative = (decoded - latent.e).square().sum(-1) / latent.e.square().sum(-1)
    return {"recon_rel_sq_median": relative.median().item(),
            "latent_vs_raw_same_noise": (through_latent - raw).abs().mean().item(),
            "raw_two_noise_draws": (raw - raw_other_noise).abs().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="can")
    parser.add_argument("--data", default="data/can_mh", help="the generated dataset folder (demo.hdf5)")
    parser.add_argument("--filter-key", default=None, help="e.g. expert+noisy, as the policies were trained")
    parser.add_argument("--policies", nargs="+", required=True, help="exported policy folders")
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()

    print("| policy | median ‖decode(μ) − e‖² / ‖e‖² | latent vs raw, same noise | raw, two noise draws "
          "| latent success | raw success |")
    print("|---|---:|---:|---:|---:|---:|")
    for folder in map(Path, args.policies):
        policy, preprocessor, _ = load_policy(folder)
        policy.eval()
        data = RobomimicDataModule(hdf5_path=str(Path(args.data) / "demo.hdf5"), task=args.task,
                                   filter_key=args.filter_key, n_obs_steps=policy.config.n_obs_steps,
                                   horizon=policy.config.horizon, val_fraction=0.0, num_workers=0)
        data.setup("fit")
        loader = torch.utils.data.DataLoader(data.train_set, batch_size=args.samples, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        sample = next(iter(loader))
        gap = conditioning_gap(policy, preprocessor({k: v for k, v in sample.items() if k.startswith(OBS_PREFIX)}))
        quality = folder.parent / "quality.json"
        summary = json.loads(quality.read_text()) if quality.exists() else {}
        success = [f"{summary[path]['success_rate']:.2f}" if path in summary else "—" for path in ("latent", "raw")]
        print(f"| {folder.parent.name} | {gap['recon_rel_sq_median']:.3f} | {gap['latent_vs_raw_same_noise']:.3f} "
              f"| {gap['raw_two_noise_draws']:.3f} | {success[0]} | {success[1]} |")


if __name__ == "__main__":
    main()
