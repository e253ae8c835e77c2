"""Choose model inputs and learner parameters on a protocol's validation folds, never its test folds.

    python bench/ablation.py --use-case fraud --protocol handbook_ch5 \\
        [--group NAME=feature,feature ...] [--cumulative] \\
        [--params '{"num_leaves": 15}' ...] [--threads 1] [--out FILE.md]

Each line is one `run_protocol(validation=True)` of our model alone (the protocol's baselines do
not move with our choices and are left out), the mean over the validation folds:
- `all`: every model input the spec declares, with its parameters;
- per --group, leave one group out (`all - NAME`), or with --cumulative, start from every input
  outside the groups and add the groups one by one in the order given (`+ NAME`);
- per --params, every input with the spec's parameters updated by that JSON object.
The point-in-time rows are joined once and cached (`protocol_rows`), so a line costs the fits.
Prints a markdown table (also written to --out) and one JSON object per line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from feastflow.settings import get_settings
from feastflow.spec import ModelSpec, load_spec
from pipelines.protocols import run_protocol


def variant(spec: ModelSpec, exclude: list[str], params: dict[str, Any], threads: int
            ) -> ModelSpec:
    """The spec with more excluded inputs, updated parameters (`num_boost_round` and `blend`
    among them: the model's own) and no protocol baselines."""
    params = dict(params)
    own = {key: params.pop(key) for key in ("num_boost_round", "blend") if key in params}
    model = spec.model.model_validate({**spec.model.model_dump(), **own,
        "exclude_features": [*spec.model.exclude_features, *exclude],
        "params": {**spec.model.params, **params, "num_threads": threads}})
    protocols = {name: p.model_copy(update={"baselines": {}}) for name, p in spec.protocols.items()}
    return spec.model_copy(update={"model": model, "protocols": protocols})


def main() -> None:
    """Run the variants and print their validation means as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--use-case", required=True)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--group", action="append", default=[], metavar="NAME=f1,f2")
    parser.add_argument("--cumulative", action="store_true")
    parser.add_argument("--params", action="append", default=[], metavar="JSON")
    parser.add_argument("--no-all", action="store_true", help="skip the `all` line")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = get_settings()
    spec = load_spec(args.use_case, settings.feature_repo)
    groups: dict[str, list[str]] = {}
    for text in args.group:
        name, _, features = text.partition("=")
        if not features:
            parser.error(f"--group {text!r}: write NAME=feature,feature")
        groups[name] = features.split(",")
    runs: list[tuple[str, list[str], dict[str, Any]]] = []
    if not args.no_all:
        runs.append(("all", [], {}))
    grouped = [f for features in groups.values() for f in features]
    if args.cumulative:
        runs.append(("no group", grouped, {}))
        added: list[str] = []
        for name, features in groups.items():
            added += features
            runs.append((f"+ {name}", [f for f in grouped if f not in added], {}))
    else:
        runs += [(f"all - {name}", features, {}) for name, features in groups.items()]
    runs += [(f"params {text}", [], json.loads(text)) for text in args.params]
    lines = ["| variant | AUC ROC | AP | CP@k | per fold AP |", "|---|---|---|---|---|"]
    for label, exclude, params in runs:
        started = time.perf_counter()
        report, _ = run_protocol(settings, variant(spec, exclude, params, args.threads),
                                 args.protocol, validation=True, progress=lambda _m: None)
        model = report["model"]
        cp = next(k for k in model if k.startswith("cp"))
        folds = " / ".join(f"{f['ap']:.3f}" for f in model["folds"])
        lines.append(f"| {label} | {model['auc']:.4f} | {model['ap']:.4f} | {model[cp]:.4f} | "
                     f"{folds} |")
        print(json.dumps({"variant": label, "excluded": exclude, "params": params,
                          "seconds": round(time.perf_counter() - started, 1),
                          **{m: v for m, v in model.items() if m != "folds"},
                          "folds": model["folds"]}), file=sys.stderr, flush=True)
        print(lines[-1], flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
