#!/usr/bin/env python3
"""benches/paired.py - compare commands by running them in alternation, for A/B checks of a change.

Usage (as the unprivileged user that measures, e.g. under `setpriv --reuid=U --regid=G
--clear-groups env -i HOME=... USER=... PATH=...`):

    benches/paired.py N CMD_A... :: CMD_B... [:: CMD_C...]

Runs every command 5 times to warm up, then N rounds of one run of each, the order reversed
every other round; prints per command the median, 10th percentile and fastest wall time, and
the median over rounds of its time / command A's time in the same round. On a shared machine
(steal time, other load) paired ratios are far steadier than medians taken minutes apart:
benches/run.sh times each command in a block of runs; this is for "did my change help".
A command that fails is counted and reported.

With PAIRED_JSON=FILE in the environment it also writes every run's time there (JSON: the
commands, per command its times in round order, its failures), for a script that makes a
table of them: `paired.py --ratio FILE I J` prints the median over rounds of command J's
time / command I's in the same round (I, J count from 0), and `paired.py --median FILE J`
command J's median in seconds.

Example (two builds of the launcher, and ch-run, on one image):

    benches/paired.py 200 ./launcher.old exec IMG /bin/true :: ./launcher.new exec IMG /bin/true \\
        :: /usr/bin/ch-run IMG -- /bin/true
"""
import json
import os
import statistics
import sys
import time


def parse(args):
    if len(args) < 2 or not args[0].isdigit():
        sys.exit(__doc__.split("\n\n")[1])
    rounds, cmds, cur = int(args[0]), [], []
    for a in args[1:]:
        if a == "::":
            cmds.append(cur)
            cur = []
        else:
            cur.append(a)
    cmds.append(cur)
    if any(not c for c in cmds):
        sys.exit("paired.py: an empty command (two '::' in a row, or one at an end)")
    return rounds, cmds


def run(cmd):
    """Wall time of one run, and whether it failed."""
    t = time.perf_counter()
    try:
        pid = os.posix_spawnp(cmd[0], cmd, os.environ)
    except OSError as e:
        sys.exit(f"paired.py: cannot run {cmd[0]}: {e}")
    _, status = os.waitpid(pid, 0)
    return time.perf_counter() - t, status != 0


def paired_ratio(times, i, j):
    return statistics.median(b / a for a, b in zip(times[i], times[j]))


def report(args):
    """--ratio FILE I J / --median FILE J: one figure of a PAIRED_JSON file."""
    try:
        with open(args[1]) as f:
            times = json.load(f)["times"]
        idx = [int(a) for a in args[2:]]
        if args[0] == "--ratio" and len(idx) == 2:
            print(f"{paired_ratio(times, *idx):.3f}")
        elif args[0] == "--median" and len(idx) == 1:
            print(f"{statistics.median(times[idx[0]]):.6f}")
        else:
            sys.exit("paired.py: --ratio FILE I J, or --median FILE J")
    except (OSError, ValueError, KeyError, IndexError, statistics.StatisticsError) as e:
        sys.exit(f"paired.py: {args[1]}: {e}")


def main():
    if sys.argv[1:2] in (["--ratio"], ["--median"]):
        return report(sys.argv[1:])
    rounds, cmds = parse(sys.argv[1:])
    for c in cmds:
        for _ in range(5):
            run(c)
    times = [[] for _ in cmds]
    failures = [0 for _ in cmds]
    for r in range(rounds):
        order = range(len(cmds)) if r % 2 == 0 else reversed(range(len(cmds)))
        for j in order:
            t, failed = run(cmds[j])
            times[j].append(t)
            failures[j] += failed
    for j, c in enumerate(cmds):
        t = sorted(times[j])
        ratio = paired_ratio(times, 0, j)
        print(
            f"{j}: median {statistics.median(t) * 1e3:7.2f} ms  p10 {t[len(t) // 10] * 1e3:7.2f} ms  "
            f"fastest {t[0] * 1e3:7.2f} ms  paired ratio to 0: {ratio:.3f}  "
            f"failed {failures[j]}  {' '.join(c)}"
        )
    if os.environ.get("PAIRED_JSON"):
        try:
            with open(os.environ["PAIRED_JSON"], "w") as f:
                json.dump({"commands": cmds, "times": times, "failed": failures}, f)
        except OSError as e:
            sys.exit(f"paired.py: cannot write PAIRED_JSON {os.environ['PAIRED_JSON']}: {e}")


if __name__ == "__main__":
    main()
