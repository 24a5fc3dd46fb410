"""Register the ``zprl`` policy type with LeRobot on ``import zprl``, without importing LeRobot eagerly.

LeRobot resolves policy types through a registry that ``zprl.policy`` fills when it is imported
(``PreTrainedConfig.register_subclass("zprl")``). Importing it costs torch, diffusers and LeRobot (~15 s on a
2-core machine), which ``import zprl`` must not pay: every simulator worker process imports zprl. So the
registration waits for LeRobot: if ``lerobot.policies`` is already imported, ``zprl.policy`` is imported at
once; otherwise a one-shot import hook imports it right after ``lerobot.policies`` has finished loading, so
``get_policy_class("zprl")``, ``make_policy_config("zprl")`` and ``--policy.type=zprl`` resolve whenever
LeRobot's policies are in use. LeRobot's own scripts find zprl through the ``lerobot_policy_zprl``
plugin distribution (``register_third_party_plugins``), which imports ``zprl.policy`` directly.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType

TRIGGER = "lerobot.policies"  # the package whose import brings LeRobot's policy registry into use


# Plain classes, not importlib.abc subclasses: importing importlib.abc would cost `import zprl` more than the rest.
class _RegisterAfterLoad:
    """Wraps the trigger package's loader: runs it, puts the original loader back, then registers zprl."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        importlib.import_module("zprl.policy")


class _LeRobotPoliciesHook:
    """One-shot finder: on the first import of ``lerobot.policies`` it removes itself and wraps that package's
    loader."""

    def find_spec(self, fullname: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterLoad(spec.loader)
                return spec
        return None


def register_with_lerobot() -> None:
    """Make the ``zprl`` policy type known to LeRobot now (LeRobot loaded) or as soon as LeRobot loads its policies."""
    if TRIGGER in sys.modules:
        importlib.import_module("zprl.policy")
    elif not any(isinstance(finder, _LeRobotPoliciesHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LeRobotPoliciesHook())
