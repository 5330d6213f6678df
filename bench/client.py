"""The measured client: `pixelmill` run inside a process that reports its own CPU time, peak memory and wall
clock to a JSON file.

    python -m bench.client --report R.json [--profile P.prof] -- generate INPUT --base-url URL ...

Everything after `--` is the `pixelmill` command line, run through `pixelmill.cli.main` exactly as the
`pixelmill` script runs it. The report separates start-up from the command: the modules a run needs (the
engine, pydantic, aiohttp: about 0.6 s of CPU, once per process) are imported before the command's clock
starts, so that CPU per image is not inflated by a fixed import cost; that cost is reported as `import_cpu_s`.
"""

from __future__ import annotations

import resource
import sys
import time

_T0 = time.monotonic()
_R0 = resource.getrusage(resource.RUSAGE_SELF)


def _cpu(r: resource.struct_rusage) -> float:
    return r.ru_utime + r.ru_stime


def main(argv: list[str]) -> int:
    import argparse
    import contextlib

    import orjson

    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", required=True)
    parser.add_argument("--profile", help="write a cProfile of the command here")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]

    import pixelmill.cli

    r_cli = resource.getrusage(resource.RUSAGE_SELF)
    import pixelmill.api
    import pixelmill.providers.openai.provider
    import pixelmill.writing.output

    r_imported = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.monotonic()
    sys.argv = ["pixelmill", *command]
    code = 0
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        pixelmill.cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    t_end = time.monotonic()
    r_end = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "exit_code": code,
        "wall_start": t_start,  # monotonic: comparable with the emulator's log
        "wall_end": t_end,
        "startup_s": t_start - _T0,
        "startup_cpu_s": _cpu(r_cli) - _cpu(_R0),
        "import_cpu_s": _cpu(r_imported) - _cpu(r_cli),
        "command_wall_s": t_end - t_start,
        "command_cpu_s": _cpu(r_end) - _cpu(r_imported),
        "command_user_s": r_end.ru_utime - r_imported.ru_utime,
        "command_sys_s": r_end.ru_stime - r_imported.ru_stime,
        "peak_rss_mb": r_end.ru_maxrss / 1024.0,  # Linux: KiB
    }
    with open(args.report, "wb") as f:
        f.write(orjson.dumps(report))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
