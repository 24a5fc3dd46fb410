"""Online RL on a frozen pretrained policy: ZPRL latent steering and its baselines.

- ``steering``: how the actor's u in (-1, 1)^d perturbs the policy (latent | action | noise | none).
- ``sac``: soft actor-critic over chunk-level macro actions (``SAC``, ``SACConfig``).
- ``replay_buffer``: circular buffer of macro transitions on the training device.
- ``collector``: chunk-level rollouts in a vector env (``ChunkCollector``, ``SteeredRolloutPolicy``).
- ``module``: ``OnlineRLModule``, the LightningModule behind ``lightning fit -c conf/zprl_online.yaml``.
- ``compare``: methods x seeds comparison runs tracked in MLflow.
"""
