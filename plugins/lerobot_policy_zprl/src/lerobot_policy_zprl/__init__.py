"""LeRobot plugin for zprl.

LeRobot's ``register_third_party_plugins`` (called by lerobot-train, lerobot-eval and lerobot-record) imports
every installed distribution whose name starts with ``lerobot_policy_``. Importing this module registers the
``zprl`` policy type, so ``--policy.type=zprl`` and ``--policy.path=<exported zprl policy>`` resolve.
"""

from zprl.policy import ZPRLConfig, ZPRLPolicy, make_zprl_pre_post_processors

__all__ = ["ZPRLConfig", "ZPRLPolicy", "make_zprl_pre_post_processors"]
