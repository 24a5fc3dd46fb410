"""Registry of the simulated tasks zprl supports, with their simulator names and rollout horizons."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about one task: which simulator builds it and how long an episode may last."""

    name: str
    suite: str  # "robomimic", "pusht" or "reach"
    sim_name: str  # robosuite env name or gymnasium id
    max_episode_steps: int
    action_dim: int


TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec("lift", "robomimic", "Lift", 300, 7),
    "can": TaskSpec("can", "robomimic", "PickPlaceCan", 400, 7),
    "square": TaskSpec("square", "robomimic", "NutAssemblySquare", 400, 7),
    "pusht": TaskSpec("pusht", "pusht", "gym_pusht/PushT-v0", 300, 2),
    "reach": TaskSpec("reach", "reach", "PointReach", 40, 2),
}

ROBOSUITE_NAME_TO_TASK = {spec.sim_name: name for name, spec in TASKS.items() if spec.suite == "robomimic"}


def get_task(name: str) -> TaskSpec:
    """Look up a task by zprl name (``lift``) or robosuite name (``Lift``)."""
    key = ROBOSUITE_NAME_TO_TASK.get(name, name).lower()
    if key not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Choose one of {sorted(TASKS)} (or a robosuite name: "
                         f"{sorted(ROBOSUITE_NAME_TO_TASK)}).")
    return TASKS[key]
