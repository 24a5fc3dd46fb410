"""zprl: online steering of pretrained diffusion / flow robot policies through a VIB bottleneck latent.

``import zprl`` registers the ``zprl`` policy type with LeRobot, lazily: see :mod:`zprl.lerobot_registration`.
"""

from zprl.lerobot_registration import register_with_lerobot

register_with_lerobot()
