"""How often each verdict rule calls a difference that is not there: simulated comparisons against BP with
no true effect, judged by the two-level paired bootstrap interval (excludes 0 → higher/lower) and by the
paired t test on the per-seed differences (``nlp_decouple.stats``; one comparison, so Holm changes nothing).

Each simulated comparison has S seed pairs on one test set of N examples. Seed pair s has a true difference
δ_s ~ Normal(0, sd) points (training noise: on average no effect); a fraction q of the examples is
discordant (one method right, the other wrong), each +1 with probability 1/2 + δ_s / (200 q), else −1.

    python benchmarks/verdict_null.py --sets 300 --seeds 3 5 --examples 6000 --sd 1.5 --resamples 1000 \
        --out docs/results/verdict_null_6000.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nlp_decouple.stats import paired_bootstrap, paired_test, percentile_interval, verdict


def simulate(seeds: int, sets: int, examples: int, sd: float, discordant: float, resamples: int, rng_seed: int,
             effect: float = 0.0) -> dict:
    """Rates at which each rule calls higher/lower over ``sets`` comparisons whose true mean difference is
    ``effect`` points (0: every call is false)."""
    rng = np.random.default_rng(rng_seed)
    bootstrap_calls = t_calls = 0
    for k in range(sets):
        effects = rng.normal(effect, sd, seeds)  # points
        p_plus = np.clip(0.5 + effects / (200 * discordant), 0, 1)
        differs = rng.random((seeds, examples)) < discordant
        signs = np.where(rng.random((seeds, examples)) < p_plus[:, None], 1, -1)
        diff = (differs * signs).astype(np.int8)
        low, high = percentile_interval(paired_bootstrap(diff, resamples, seed=k))
        bootstrap_calls += low > 0 or high < 0
        word = verdict(paired_test((100 * diff.mean(1)).tolist(), 1.0))
        t_calls += word.startswith(("higher", "lower"))
    se = lambda rate: math.sqrt(rate * (1 - rate) / sets)
    rates = {"bootstrap": bootstrap_calls / sets, "t_test": t_calls / sets}
    return {"seeds": seeds, "false_difference_rate": rates, "monte_carlo_se": {k: se(v) for k, v in rates.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=300, help="simulated comparisons per seed count")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5], help="seed pairs per comparison")
    parser.add_argument("--examples", type=int, default=1520, help="test examples (AG News 7,600 re-split: 1,520)")
    parser.add_argument("--sd", type=float, default=1.0, help="seed-to-seed sd of the true difference, points")
    parser.add_argument("--discordant", type=float, default=0.12, help="share of examples only one method gets right")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = {k: getattr(args, k) for k in ("sets", "examples", "sd", "discordant", "resamples")}
    results = [simulate(n, args.sets, args.examples, args.sd, args.discordant, args.resamples, 1000 * n) for n in args.seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    for r in results:
        rates = r["false_difference_rate"]
        print(f"{r['seeds']} seeds: false higher/lower — bootstrap {100 * rates['bootstrap']:.1f}%, "
              f"paired t test {100 * rates['t_test']:.1f}% (± {100 * r['monte_carlo_se']['t_test']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
