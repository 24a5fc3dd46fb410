"""LeRobot-compatible ZPRL policy: diffusion / flow-matching action generator with a plug-in VIB.

Importing this package registers the policy type "zprl" with LeRobot, so lerobot's
`make_policy_config("zprl")`, `get_policy_class("zprl")` and `make_pre_post_processors` resolve it.
"""

from .configuration_zprl import ZPRLConfig, ZPRLSettings, zprl_config_for
from .modeling_zprl import LatentEncoding, ZPRLModel, ZPRLPolicy
from .processor_zprl import make_zprl_pre_post_processors
from .vib import VariationalBottleneck

__all__ = [
    "LatentEncoding",
    "VariationalBottleneck",
    "ZPRLConfig",
    "ZPRLModel",
    "ZPRLPolicy",
    "ZPRLSettings",
    "make_zprl_pre_post_processors",
    "zprl_config_for",
]
