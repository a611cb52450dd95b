"""`python -m runner --help`, generated from the schema: every key with its type, default and help, the config
groups and their options, and the launchers."""
from __future__ import annotations

import dataclasses

from .schema import CONFIG_DIR, RunnerConfig, register_resolvers


OTHER_GROUPS = {"experiment": "a sweep declared in conf/experiment/<name>.yaml (run it with -m)"}
HYDRA_LAUNCHERS = {
    "basic": "Hydra's default: the jobs one after another in this process, reusing the loaded model",
    "joblib": "parallel worker processes on this machine (hydra.launcher.n_jobs=N)",
    "submitit_local": "one process per job on this machine; a crashed job is recorded, the sweep goes on",
    "submitit_slurm": "SLURM jobs through submitit",
}


def help_text() -> str:
    """The text of `python -m runner --help`: what every group and key means (the `doc` help of the dataclasses),
    the options of each group (Hydra's $APP_CONFIG_GROUPS) and the launchers."""
    import typing

    def entries(cls: type, prefix: str) -> list[tuple[str, str]]:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        out = [(prefix + f.name, f.metadata.get("help", "")) for f in fields]
        nested = [f.name for f in fields if dataclasses.is_dataclass(hints[f.name])]  # dims.override, dims.fallback
        if nested:  # fields of one type (DimValues) share their keys: dims.{override,fallback}.<dim>
            names = nested[0] if len(nested) == 1 else "{" + ",".join(nested) + "}"
            out += entries(hints[nested[0]], f"{prefix}{names}.")
        return out

    hints = typing.get_type_hints(RunnerConfig)
    groups = [f for f in dataclasses.fields(RunnerConfig) if dataclasses.is_dataclass(hints[f.name])]
    sections = {f.name: entries(hints[f.name], f"{f.name}.") for f in groups}
    width = max(len(key) for keys in sections.values() for key, _ in keys) + 2
    lines = ["python -m runner profiles a Hugging Face MoE model on a text slice (routing, exact FLOPs, loss, speed) and "
             "writes tidy parquet.",
             "",
             "  python -m runner [group=option ...] [key=value ...]   one job",
             "  python -m runner -m [key=a,b ...] [group=x,y ...]       a sweep: one job per combination",
             "  python -m runner ... --cfg job --resolve                show the composed config, run nothing",
             "",
             "== Groups (group=option; then group.key=value) =="]
    lines += [f"  {f.name:<{width}}{f.metadata['help']}" for f in groups]
    lines += [f"  {name:<{width}}{text}" for name, text in OTHER_GROUPS.items()]
    lines += ["", "== Options of each group ==", "$APP_CONFIG_GROUPS", "", "== Keys (key=value) =="]
    for f in dataclasses.fields(RunnerConfig):
        if f not in groups:
            lines.append(f"  {f.name:<{width}}{f.metadata['help']}")
    for name, keys in sections.items():
        lines += ["", f"== {name}.* =="] + [f"  {key:<{width}}{text}" for key, text in keys]
    lines += ["", "== Launchers (-m hydra/launcher=NAME) =="]
    lines += [f"  {name:<{width}}{text}" for name, text in {**HYDRA_LAUNCHERS, **launcher_presets()}.items()]
    lines += ["", "More: docs/runner.md; --hydra-help for Hydra's own flags."]
    return "\n".join(lines).replace("$", "$$").replace("$$APP_CONFIG_GROUPS", "$APP_CONFIG_GROUPS") + "\n"


def launcher_presets() -> dict[str, str]:
    """This project's launcher presets: name -> the first comment line of conf/hydra/launcher/<name>.yaml that is
    neither the package line nor a command line."""
    presets = {}
    for path in sorted((CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")):
        comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
        text = next((c for c in comments if not c.startswith(("@package", "python -m"))), "")
        presets[path.stem] = f"preset: {text}"
    return presets


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="runner_schema", node=RunnerConfig)
    store.store(group="hydra/help", name="runner_help",
                node={"app_name": "runner", "header": "", "footer": "", "template": help_text()})
