"""Registry of the simulated tasks zprl supports, with their simulator names and rollout horizons."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about one task: which simulator builds it and how long an episode may last."""

    name: str
    suite: str  # "robomimic", "metaworld", "pusht" or "reach"
    sim_name: str  # robosuite env name, MetaWorld env name or gymnasium id
    max_episode_steps: int


TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec("lift", "robomimic", "Lift", 300),
    "can": TaskSpec("can", "robomimic", "PickPlaceCan", 400),
    "square": TaskSpec("square", "robomimic", "NutAssemblySquare", 400),
    # MetaWorld: 200-step episodes as the authors' runs (MetaWorld's own limit is 500)
    "box_close": TaskSpec("box_close", "metaworld", "box-close-v3", 200),
    "push_wall": TaskSpec("push_wall", "metaworld", "push-wall-v3", 200),
    "pusht": TaskSpec("pusht", "pusht", "gym_pusht/PushT-v0", 300),
    "reach": TaskSpec("reach", "reach", "PointReach", 40),
}

ROBOSUITE_NAME_TO_TASK = {spec.sim_name: name for name, spec in TASKS.items() if spec.suite == "robomimic"}
METAWORLD_NAME_TO_TASK = {spec.sim_name: name for name, spec in TASKS.items() if spec.suite == "metaworld"}
SIM_NAME_TO_TASK = {**ROBOSUITE_NAME_TO_TASK, **METAWORLD_NAME_TO_TASK}  # the names datasets store as env_name


def get_task(name: str) -> TaskSpec:
    """Look up a task by zprl name (``lift``), robosuite name (``Lift``) or MetaWorld name (``box-close-v3``)."""
    key = SIM_NAME_TO_TASK.get(name, name).lower()
    if key not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Choose one of {sorted(TASKS)} (or a robosuite name: "
                         f"{sorted(ROBOSUITE_NAME_TO_TASK)}, or a MetaWorld name: {sorted(METAWORLD_NAME_TO_TASK)}).")
    return TASKS[key]
