"""Where tuning studies live: Optuna storage, the study's name, and the check that a study being
continued is the same search.

Storage: a SQLite file `PLAN.tune.db` beside the plan unless `--storage` names another (a path, or
any SQLAlchemy URL: `postgresql://user@host/db` lets workers on many machines share one study).
Study: `PLAN-<hash>`, the hash over the search space, the objective, what the trials are scored on
and the sampler, so rerunning the same command continues its study and changing any of these starts
a new one in the same file. The study records that description; a named `--study` holding another search is
refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.extras import install_hint
from mergescope.score.candidate import Objective
from mergescope.search.tune import require_optuna
from mergescope.search.tune_space import Space

SEARCH_ATTR = "mergescope_search"  # the study's user attribute holding what it searches
SAMPLERS = ("tpe", "cmaes")
HEARTBEAT_S = 30  # servers: a worker that dies leaves no RUNNING trial behind for longer than the grace
GRACE_S = 120


def default_storage(plan_path: str | Path) -> Path:
    """PLAN.tune.db beside the plan (ta.yml -> ta.tune.db)."""
    p = Path(plan_path).expanduser().resolve()
    return p.with_name(p.stem + ".tune.db")


def storage_url(given: str | None, plan_path: str | Path) -> str:
    """A SQLAlchemy URL: `given` as is when it is one, a SQLite file for a path, else the default."""
    if given and "://" in given:
        return given
    path = Path(given).expanduser().resolve() if given else default_storage(plan_path)
    return f"sqlite:///{path}"


def with_driver(url: str) -> str:
    """postgresql:// with the driver named: the [tune] extra's psycopg2 where it is installed (SQLAlchemy
    2.1 would pick psycopg 3 for a bare postgresql://); `postgres://` is accepted as the same."""
    m = re.match(r"(postgres|postgresql)://", url)
    if not m:
        return url
    import importlib.util

    driver = next((d for d in ("psycopg2", "psycopg") if importlib.util.find_spec(d) is not None), "psycopg2")
    return f"postgresql+{driver}://" + url[m.end() :]


def safe_url(url: str) -> str:
    """The URL with any password hidden (for messages)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str):
    """Optuna's RDB storage at `url`: InputError naming --storage and the fix when it is unreachable."""
    optuna = require_optuna()
    shown = safe_url(url)
    sqlite = url.startswith("sqlite:")
    if sqlite:
        folder = Path(url.split(":///", 1)[-1]).parent
        if not folder.is_dir():
            raise InputError(f"--storage {shown}: the folder {folder} does not exist; create it or pick another path")
    kwargs = {} if sqlite else {"pool_pre_ping": True}
    if url.startswith(("postgresql", "postgres")):
        kwargs["connect_args"] = {"connect_timeout": 10}
    beat = {} if sqlite else {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" in some optuna versions
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(with_driver(url), engine_kwargs=kwargs, **beat)
        except ImportError as exc:  # optuna wraps the driver's own ImportError
            missing = getattr(exc, "name", None) or getattr(exc.__cause__ or exc.__context__, "name", None)
            fix = install_hint("tune") if url.startswith("postgres") else "install it, or use sqlite or postgresql"
            raise InputError(
                f"--storage {shown}: the database driver{f' ({missing})' if missing else ''} is not installed: {fix}"
            ) from None
        except Exception as exc:  # SQLAlchemy's errors (and a race of two workers creating the tables)
            reason = _first_line(exc)
            if attempt == 2 or _unreachable(exc):
                raise InputError(
                    f"--storage {shown}: cannot open the study storage ({reason}); check the URL, that the server "
                    "runs and that the database exists"
                ) from None
            time.sleep(0.5 + attempt)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _unreachable(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in ("OperationalError", "ArgumentError", "NoSuchModuleError", "ValueError")


def search_of(space: Space, objective: Objective, scorer) -> dict:
    """What the study searches: the space, the objective, and what scores a trial (texts by content)."""
    texts = {t: hashlib.sha256(d).hexdigest()[:16] for t, d in (scorer.texts or {}).items()}
    tasks = {"tasks": scorer.tasks.describe()} if getattr(scorer, "tasks", None) is not None else {}
    return json.loads(
        json.dumps(
            {
                **space.describe(),
                "objective": objective.describe(),
                "higher_is_better": bool(scorer.higher_is_better),
                "texts": texts,
                "command": scorer.command,
                "context": scorer.context,
                "stride": scorer.stride,
                **tasks,
            }
        )
    )


def default_study_name(plan_path: str | Path, search: dict, sampler: str = "tpe") -> str:
    """PLAN-<hash of the search and the sampler>: another sampler is another study unless --study says
    otherwise (a named study may switch samplers)."""
    digest = hashlib.sha256(json.dumps([search, sampler], sort_keys=True).encode()).hexdigest()[:8]
    return f"{Path(plan_path).stem}-{digest}"


def make_sampler(kind: str, seed: int | None, start: dict | None = None):
    """TPE, or CMA-ES centred on `start` (the plan's own values) when given: a search around the plan."""
    optuna = require_optuna()
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401  (optuna's CmaEsSampler needs it)
        except ImportError:
            raise InputError(f"--sampler cmaes: needs the cmaes package: {install_hint('tune')}") from None
        return optuna.samplers.CmaEsSampler(x0=start, seed=seed, warn_independent_sampling=False)
    raise InputError(f"--sampler {kind}: unknown; use one of {', '.join(SAMPLERS)}")


def open_study(
    storage,
    name: str,
    search: dict,
    *,
    higher_is_better: bool = False,
    sampler: str = "tpe",
    seed: int | None = None,
    prune: bool = True,
    start: dict | None = None,
):
    """Create the study or load it to continue; InputError when it holds another search.

    The sampler's seed is `stream_seed(seed, trials the study already holds)`, so a resumed run does not
    replay the first run's random start and two workers never share a stream. `start`:
    Space.start_values(), where CMA-ES begins."""
    optuna = require_optuna()
    pruner = (
        optuna.pruners.PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=0)
        if prune
        else optuna.pruners.NopPruner()
    )
    direction = "maximize" if higher_is_better else "minimize"
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            load_if_exists=True,
            sampler=make_sampler(sampler, seed, start),
            pruner=pruner,
        )
    except ValueError as exc:  # e.g. a study of this name with other directions
        raise InputError(f"--study {name}: cannot continue it ({_first_line(exc)}); pick another --study") from None
    held = study.user_attrs.get(SEARCH_ATTR)
    if held is None:
        if study.get_trials(deepcopy=False):
            raise InputError(f"--study {name}: holds trials that mergescope tune did not make; pick another --study")
        study.set_user_attr(SEARCH_ATTR, search)
    elif held != search:
        diff = sorted(k for k in set(held) | set(search) if held.get(k) != search.get(k))
        raise InputError(
            f"--study {name}: holds another search (it differs in {', '.join(diff)}); rerun with that study's "
            "options or pick a new --study name"
        )
    if seed is not None:
        study.sampler = make_sampler(sampler, stream_seed(seed, len(study.get_trials(deepcopy=False))), start)
    return study


def stream_seed(seed: int, trials: int) -> int:
    """The sampler's seed for a worker started with `seed` on a study holding `trials` trials: a hash of
    both, so workers given different seeds never draw the same stream (with `seed + trials`, seed 1 at
    2 trials and seed 3 at 0 trials did), and one command rerun the same way repeats itself."""
    digest = hashlib.sha256(f"mergescope-tune:{int(seed)}:{int(trials)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
