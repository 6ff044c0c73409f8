"""The files shipped inside the package (package data, so a pip install has them too): the training configs and the
study plans. Free of torch, for the command lines' --help; `configs/` in a checkout is a link to this folder."""

from pathlib import Path

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
SHIPPED_STUDIES = SHIPPED_CONFIGS / "studies"


def shipped_config_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.yaml"))


def shipped_plan_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_STUDIES.glob("*.yaml"))
