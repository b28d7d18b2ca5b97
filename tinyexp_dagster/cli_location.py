"""Which code location and which pipeline a `tinyexp-dagster` command is about.

The code location is found as `dagster dev` finds it: `-m MODULE`, `-f FILE` or
`-w WORKSPACE` (with `-d` / `-a` as in Dagster), else the folder's `pyproject.toml`
(`[tool.dagster]` or `[tool.dg]`: `[tool.dg.project] code_location_target_module`, default
`<root_module>.definitions`), else its `workspace.yaml`. A pipeline is a
`<name>/trained_model` asset of that location; with one pipeline it is the default, with
several a command that needs one names them and asks for `--pipeline NAME`.

Hints name commands of the project itself: `dagster dev -m <module>`, `dagster job execute
-m <module> -j <name>_training_pipeline`, `tinyexp-dagster sweep <name> run --all`.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class LocationError(LookupError):
    """No code location found, or one that cannot be loaded; the message says what to pass."""


class PipelineChoiceError(LookupError):
    """A pipeline name the location does not declare, or none given where several exist."""


@dataclass(frozen=True)
class CodeLocation:
    """One Python code location: the pointer Dagster loads it from and where it was found."""

    found_in: str  # "-m", "pyproject.toml", "workspace.yaml", ...
    module_name: str | None = None
    python_file: str | None = None
    package_name: str | None = None
    autoload_defs_module_name: str | None = None
    working_directory: str | None = None
    attribute: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def cli_args(self) -> str:
        """The location as `dagster dev` / `dagster job execute` options (`-m mod`)."""
        if self.module_name:
            parts = ["-m", self.module_name]
        elif self.python_file:
            parts = ["-f", self.python_file]
        elif self.package_name:
            parts = ["--package-name", self.package_name]
        else:
            parts = ["--autoload-defs-module-name", str(self.autoload_defs_module_name)]
        if self.working_directory and Path(self.working_directory) != Path.cwd():
            parts += ["-d", self.working_directory]
        if self.attribute:
            parts += ["-a", self.attribute]
        return shlex.join(parts)

    def repository(self) -> Any:
        """The loaded ReconstructableRepository (imports the project's definitions once)."""
        if "repo" not in self._cache:
            from dagster._cli.workspace.cli_target import get_repository_python_origin_from_cli_opts
            from dagster._utils.hosted_user_process import recon_repository_from_origin
            from dagster_shared.cli import PythonPointerOpts

            opts = PythonPointerOpts(
                python_file=self.python_file,
                module_name=self.module_name,
                package_name=self.package_name,
                working_directory=self.working_directory or os.getcwd(),
                attribute=self.attribute,
                autoload_defs_module_name=self.autoload_defs_module_name,
            )
            try:
                origin = get_repository_python_origin_from_cli_opts(opts)
            except Exception as err:  # click's UsageError, the project's import error, ...
                raise LocationError(f"cannot load {self.cli_args()}: {err}") from err
            self._cache["repo"] = recon_repository_from_origin(origin)
        return self._cache["repo"]

    def definitions(self) -> Any:
        """The location's RepositoryDefinition."""
        if "defs" not in self._cache:
            self._cache["defs"] = self.repository().get_definition()
        return self._cache["defs"]


@dataclass(frozen=True)
class Pipeline:
    """A pipeline of a code location: its name, assets, and its sweep's trial keys."""

    name: str
    location: CodeLocation
    assets: tuple[str, ...]  # the pipeline's asset names (`trained_model`, ...)
    trial_keys: tuple[str, ...]  # partition keys of its training; () without a sweep

    @property
    def training_job(self) -> str:
        return f"{self.name}_training_pipeline"

    def run_hint(self) -> str:
        """The command that trains this pipeline from a terminal."""
        if self.trial_keys:
            return f"tinyexp-dagster sweep {self.name} run --all"
        loc = self.location.cli_args()
        return f"dagster job execute {loc} -j {self.training_job}"


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """`-m` / `-f` / `-w` / `-d` / `-a`, as Dagster's commands take them."""
    group = parser.add_argument_group("code location (default: as `dagster dev` finds it)")
    group.add_argument("-m", "--module-name", help="the module holding the Definitions")
    group.add_argument("-f", "--python-file", help="the file holding the Definitions")
    group.add_argument("-w", "--workspace", help="a workspace.yaml")
    group.add_argument("-d", "--working-directory", help="where the module or file loads from")
    group.add_argument("-a", "--attribute", help="the Definitions' attribute name")


def find_locations(args: argparse.Namespace) -> list[CodeLocation]:
    """The code locations named by the options, else by the working directory's files."""
    module, file = getattr(args, "module_name", None), getattr(args, "python_file", None)
    workspace = getattr(args, "workspace", None)
    given = [flag for flag, v in (("-m", module), ("-f", file), ("-w", workspace)) if v]
    if len(given) > 1:
        raise LocationError(f"options {' and '.join(given)}: expected one of -m, -f, -w")
    wd = getattr(args, "working_directory", None) or os.getcwd()
    attribute = getattr(args, "attribute", None)
    if module:
        return [CodeLocation("-m", module_name=module, working_directory=wd, attribute=attribute)]
    if file:
        path = str(Path(file).resolve())
        return [CodeLocation("-f", python_file=path, working_directory=wd, attribute=attribute)]
    if workspace:
        return _from_origins(f"-w {workspace}", _workspace_origins(workspace))
    from dagster._cli.utils import has_pyproject_dagster_block
    from dagster._core.workspace.load_target import get_origins_from_toml

    if has_pyproject_dagster_block("pyproject.toml"):
        return _from_origins("pyproject.toml", get_origins_from_toml("pyproject.toml"))
    for name in ("workspace.yaml", "workspace.yml"):
        if Path(name).exists():
            return _from_origins(name, _workspace_origins(name))
    raise LocationError(
        f"no code location: pass -m MODULE, -f FILE or -w WORKSPACE, or run in the project's "
        f"folder (pyproject.toml with [tool.dg] or [tool.dagster], or workspace.yaml); "
        f"cwd: {os.getcwd()}"
    )


def _workspace_origins(path: str) -> list[Any]:
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    if not Path(path).is_file():
        raise LocationError(f"-w {path}: no such file")
    try:
        return list(location_origins_from_yaml_paths([path]))
    except Exception as err:  # Dagster's check errors name the bad key
        raise LocationError(f"cannot read workspace {path}: {err}") from err


def _from_origins(found_in: str, origins: list[Any]) -> list[CodeLocation]:
    locations = []
    for origin in origins:
        target = getattr(origin, "loadable_target_origin", None)
        if target is None:  # a gRPC server's location: nothing this process can import
            continue
        locations.append(
            CodeLocation(
                found_in,
                module_name=target.module_name,
                python_file=target.python_file,
                package_name=target.package_name,
                autoload_defs_module_name=target.autoload_defs_module_name,
                working_directory=target.working_directory,
                attribute=target.attribute,
            )
        )
    if not locations:
        raise LocationError(f"{found_in} names no Python code location (module or file)")
    return locations


def pipelines_of(location: CodeLocation) -> list[Pipeline]:
    """Every pipeline the location declares: each `<name>/trained_model` asset."""
    graph = location.definitions().asset_graph
    by_name: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        if len(key.path) == 2:
            by_name.setdefault(key.path[0], []).append(key.path[1])
    pipelines = []
    for name, assets in sorted(by_name.items()):
        if "trained_model" not in assets:
            continue
        import dagster as dg

        partitions = graph.get(dg.AssetKey([name, "trained_model"])).partitions_def
        keys = tuple(partitions.get_partition_keys()) if partitions is not None else ()
        pipelines.append(Pipeline(name, location, tuple(sorted(assets)), keys))
    return pipelines


def all_pipelines(args: argparse.Namespace) -> list[Pipeline]:
    """The pipelines of every code location found (see `find_locations`)."""
    return [p for location in find_locations(args) for p in pipelines_of(location)]


def choose_pipeline(
    pipelines: list[Pipeline], name: str | None, *, needs_sweep: bool = False
) -> Pipeline:
    """The pipeline called `name`, or the only one (the only sweep with `needs_sweep`)."""
    candidates = [p for p in pipelines if p.trial_keys or not needs_sweep]
    what = "sweep pipelines" if needs_sweep else "pipelines"
    listed = ", ".join(p.name for p in candidates) or "none"
    if name is not None:
        for pipeline in candidates:
            if pipeline.name == name:
                return pipeline
        if any(p.name == name for p in pipelines):
            raise PipelineChoiceError(f"pipeline {name!r} has no sweep; {what}: {listed}")
        raise PipelineChoiceError(f"pipeline {name!r}: not among the location's {what}: {listed}")
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise PipelineChoiceError(f"the code location declares no {what}")
    raise PipelineChoiceError(f"the code location declares several {what} ({listed}): name one")


def ui_hint(args: argparse.Namespace) -> str:
    """How to open this project's UI (best effort: without a location, plain `dagster dev`)."""
    try:
        locations = find_locations(args)
    except LocationError:
        return "open the UI: dagster dev (in the project's folder), then http://127.0.0.1:3000"
    if getattr(args, "workspace", None):
        cli = f" -w {shlex.quote(args.workspace)}"
    elif locations[0].found_in in ("pyproject.toml", "workspace.yaml", "workspace.yml"):
        cli = ""  # `dagster dev` finds it there by itself
    else:
        cli = f" {locations[0].cli_args()}"
    return f"open the UI: dagster dev{cli}, then http://127.0.0.1:3000 (same DAGSTER_HOME)"
