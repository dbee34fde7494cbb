"""Instructions of `gateway report` against DuckDB alone, under valgrind's callgrind.

    python bench/bench_report_instructions.py                   # 100,000 generated lines
    python bench/bench_report_instructions.py --lines 1000000   # about 15 minutes
    python bench/bench_report_instructions.py --parts           # also each part of the report's statement
    python bench/bench_report_instructions.py --checkout ../old-main   # another checkout's report (no --parts)

bench_report.py times the report, but on a shared machine its ratios move by
0.1-0.2x between runs (bench/README.md); an instruction count moves by well
under 1%. One process under `valgrind --tool=callgrind` imports everything,
runs each step once to warm up, then runs each step again between two
counter dumps (`callgrind_control --dump`): the instructions of every thread
for exactly that step. Steps:

* **alone**: DuckDB alone, as in bench_report.py (requests and TTFT
  p50/p95/p99 per arm), from its connection to its close;
* **report**: `gateway.report.main([log])`, end to end, with its own
  connection;
* **alone-query**: DuckDB alone's query on an open connection;
* with `--parts`, the report's one-pass statement built up on that same
  connection, against alone-query: **floor** (the 13 fields read, one count each),
  **kinds** (+ every line classified), **aggregates** (+ the per-arm
  figures, no samples), **statement** (+ the duration samples: the whole
  statement).

DuckDB runs one thread (alone and in the report), and OpenBLAS one: under
valgrind threads take turns, and a worker spinning while another works would
be counted (a run with two DuckDB threads counted DuckDB alone at 8.7 and
18.1 billion instructions; idle BLAS workers made some runs take billions
more, and `--fair-sched=yes` keeps the turns fair). Instructions are not time (memory traffic is not counted,
and nothing runs in parallel), but the same work gives the same count, so a
change's effect is read here and its time in bench_report.py.
Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

sys.path.insert(0, str(HERE))
from report_queries import ALONE, params, parts  # noqa: E402


def child(log: str, with_parts: bool) -> None:
    """Run under callgrind: each step once to warm up, then between dumps."""
    import duckdb

    import gateway.report as report
    from gateway.report import engine

    # One DuckDB thread, here and in the report: under valgrind threads take
    # turns, and an idle worker that spins while another works would count.
    opened = engine.Engine.__init__

    def one_thread(self: engine.Engine, *args: object, **kwargs: object) -> None:
        opened(self, *args, **kwargs)  # type: ignore[arg-type]
        self.con.execute("SET threads = 1")

    engine.Engine.__init__ = one_thread  # type: ignore[method-assign]
    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    given = params([log])

    def query(sql: str):
        return lambda: con.execute(sql, {k: v for k, v in given.items() if f"${k}" in sql}).fetchnumpy()

    def run_report() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            if report.main([log]) != 0:
                raise SystemExit("the report failed")

    def alone_whole() -> None:
        own = duckdb.connect(":memory:")  # as the report's Engine opens it
        own.execute("SET threads = 1")
        own.execute(ALONE, {"f": [log]}).fetchall()
        own.close()

    # DuckDB alone and the report each from a connection of their own to its
    # close; the statement's parts on one open connection, against DuckDB
    # alone's query on it.
    steps = {"alone": alone_whole, "report": run_report, "alone-query": query(ALONE)}
    if with_parts:
        steps.update({name: query(sql) for name, sql in parts().items()})
    for step in steps.values():
        step()
    pid = str(os.getpid())
    for name, step in steps.items():
        subprocess.run(["callgrind_control", f"--dump=before-{name}", pid], check=True, capture_output=True)
        step()
        subprocess.run(["callgrind_control", f"--dump={name}", pid], check=True, capture_output=True)


def counts(out_prefix: Path) -> dict[str, int]:
    found = {}
    dumps = out_prefix.parent.glob(out_prefix.name + ".*")
    for dump in sorted(dumps, key=lambda f: int(f.suffix[1:])):   # in the order dumped
        text = dump.read_text(errors="replace")
        name = re.search(r"^desc: Trigger: Client Request: dump (\S+)|^desc: Trigger: dump (\S+)", text, re.M)
        total = re.search(r"^totals: (\d+)", text, re.M)
        if name and total:
            step = name.group(1) or name.group(2)
            if not step.startswith("before-"):
                found[step] = int(total.group(1))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=100_000, help="generated log lines (default 100000)")
    p.add_argument("--log", metavar="FILE", help="an existing plain log instead of a generated one")
    p.add_argument("--parts", action="store_true", help="also each part of the report's statement")
    p.add_argument("--checkout", metavar="DIR", default=str(ROOT), help="the checkout whose report runs")
    p.add_argument("--child", nargs=2, metavar=("LOG", "PARTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1] == "1")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-report-instr-") as tmp:
        log = args.log
        if log is None:
            from bench_report import write_log

            log = os.path.join(tmp, "requests.log")
            write_log(log, args.lines)
        out = Path(tmp) / "callgrind.out"
        # OpenBLAS starts worker threads when numpy is imported; under valgrind,
        # whose threads take turns, a spinning one was counted by the billion
        # in some runs and not others. One BLAS thread, and fair turns.
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(Path(args.checkout).resolve()),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--fair-sched=yes", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", log, "1" if args.parts else "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            print(proc.stderr.decode(errors="replace")[-3000:], file=sys.stderr)
            return 1
        found = counts(out)
    lines = sum(1 for _ in open(args.log, "rb")) if args.log else args.lines
    print(f"{lines:,} lines; checkout {args.checkout}; instructions, every thread, one run of each step")
    for name, n in found.items():
        base, of = (found["alone"], "DuckDB alone") if name in ("alone", "report") else \
            (found["alone-query"], "its query")
        print(f"  {name:<11} {n / 1e6:9.1f} M  {n / base:5.2f}x {of:<12}  ({n / lines:,.0f} per line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
