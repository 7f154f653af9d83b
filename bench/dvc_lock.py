"""What reading and writing ``dvc.lock`` costs every stage, by parser, on a finished run's lock.

Each ``dvc repro --single-item`` (one per stage under ``stitch-ops repro``) reads ``dvc.lock``
with ruamel.yaml's safe loader (in C when ``ruamel.yaml.clib`` is installed, a dependency of
this project; pure Python otherwise) and writes it back with a round-trip parse and dump (pure
Python either way); each tracked MLflow run reads it with PyYAML
(:func:`stitch_ops.tracking.datasets.locked_outputs`, libyaml). The lock grows with the run:
the last stages of a pipeline pay the most. Candidates run in turn, CPU time, median; every
parser must give the same data.

    python bench/dvc_lock.py --lock WORKSPACE/dvc.lock [--repeats 5]

(a finished workspace: e.g. ``python bench/pipeline.py --profile smoke --keep``)
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import yaml
from dvc.utils.serialize._yaml import _dump, parse_yaml_for_update
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleaved_medians, print_table, save_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    text = args.lock.read_text()

    def round_trip() -> str:
        stream = io.StringIO()
        _dump(parse_yaml_for_update(text, str(args.lock)), stream)
        return stream.getvalue()

    candidates = {
        "ruamel safe, pure Python (DVC's read without ruamel.yaml.clib)": lambda: YAML(typ="safe", pure=True).load(text),
        "ruamel safe, C (DVC's read with ruamel.yaml.clib)": lambda: YAML(typ="safe").load(text),
        "ruamel round trip, parse + dump (DVC's write)": round_trip,
        "PyYAML SafeLoader (tracking, before)": lambda: yaml.load(text, Loader=yaml.SafeLoader),
        "PyYAML CSafeLoader (tracking, now)": lambda: yaml.load(text, Loader=yaml.CSafeLoader),
    }
    results = {name: run() for name, run in candidates.items() if "round trip" not in name}
    assert all(value == results[next(iter(results))] for value in results.values()), "the parsers disagree"
    assert round_trip() == text, "DVC's round trip changed the lock"
    medians = interleaved_medians(candidates, args.repeats, warmup=1)
    print_table(f"{args.lock}: {len(text) / 1e3:.0f} kB, {text.count(chr(10))} lines; CPU s, median of {args.repeats}",
                [(name, f"{seconds:.2f}") for name, seconds in medians.items()], ("", "CPU s"))
    print(f"results: {save_results('dvc_lock', {'lock_bytes': len(text), **medians})}")


if __name__ == "__main__":
    main()
