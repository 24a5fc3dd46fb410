"""Import-time shims for third-party packages. Import this module before robomimic's env code."""

import os
import sys
import types

from zprl.logging_setup import LOG_LEVEL_ENV, silence_known_harmless


def install_mujoco_py_stub() -> None:
    """Register a minimal ``mujoco_py`` module so robomimic 0.3.0 imports with modern MuJoCo.

    robomimic 0.3.0's ``envs/env_robosuite.py`` imports ``mujoco_py`` only to name the exception type
    of unstable simulations (``mujoco_py.builder.MujocoException``). robosuite 1.4 runs on the
    official ``mujoco`` bindings, so we stand in a module whose exception type is plain ``Exception``.
    """
    if "mujoco_py" in sys.modules:
        return
    mujoco_py = types.ModuleType("mujoco_py")
    builder = types.ModuleType("mujoco_py.builder")
    builder.MujocoException = Exception
    mujoco_py.builder = builder
    sys.modules["mujoco_py"] = mujoco_py
    sys.modules["mujoco_py.builder"] = builder


install_mujoco_py_stub()
if LOG_LEVEL_ENV in os.environ:  # a zprl command configured logging: env worker processes stay as quiet as it
    silence_known_harmless()
