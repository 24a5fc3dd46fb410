"""Write the backward-compatibility artifact of tests/test_backward_compat.py (as LeRobot's tests/artifacts).

    PYTHONPATH=src python tests/artifacts/make_artifacts.py

writes ``tests/artifacts/tiny_policy/`` (the tiny PushT policy of tests/conftest.py, a smaller timestep embedding,
exported with its processors)
and ``tests/artifacts/expected_action.safetensors`` (a fixed observation, the generator noise and the action the
exported policy takes). Rerun it only on a deliberate change of the exported format or of the policy's maths,
and commit the new files saying why: the point of the artifact is that ordinary changes leave it valid.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest and the test module
from conftest import TINY_PUSHT_POLICY, save_tiny_pusht_policy  # noqa: E402
from test_backward_compat import EXPECTED, POLICY, act  # noqa: E402

from zprl.policy_io import load_policy  # noqa: E402

SMALLER = {"diffusion_step_embed_dim": 32}  # LeRobot's 128 would make model.safetensors 1 MB instead of 0.4 MB


def main() -> None:
    shutil.rmtree(POLICY, ignore_errors=True)
    POLICY.mkdir(parents=True)
    save_tiny_pusht_policy(POLICY, **SMALLER)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "observation.state": torch.tensor([[100.0, 200.0], [350.0, 420.0]]),
        "observation.environment_state": torch.stack([torch.linspace(0, 512, 16), torch.linspace(512, 0, 16)]),
        "noise": torch.randn(2, TINY_PUSHT_POLICY["horizon"], 2, generator=generator),
    }
    policy, preprocessor, postprocessor = load_policy(POLICY)
    inputs["action"] = act(policy, preprocessor, postprocessor, inputs).contiguous()
    save_file(inputs, EXPECTED)
    size = sum(path.stat().st_size for path in [*POLICY.iterdir(), EXPECTED])
    print(f"Wrote {POLICY} and {EXPECTED} ({size / 1024:.0f} KiB); action {inputs['action'].tolist()}")


if __name__ == "__main__":
    main()
