"""Benchmarks: ``python -m bench rag`` (retrieval quality and speed), ``train``, ``dpo`` (preference tuning against
plain TRL), ``load``, ``serving``, ``memory`` (the memory estimate against measured peaks), ``experiment``
(generated questions against human ones, and the judge's agreement with gold answers), ``newcomer`` (the
guide's whole path in a browser, timed) or ``gpu`` (QLoRA throughput on CUDA against plain TRL).

Each subcommand's module is imported only when chosen, so one benchmark's heavy dependencies never
slow the other down.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmark", choices=("rag", "train", "dpo", "load", "serving", "memory", "experiment",
                                                     "newcomer", "gpu"))
    args, rest = parser.parse_known_args(argv[:1])
    rest += argv[1:]
    if args.benchmark == "serving":
        from bench import serving

        return serving.main(rest)
    if args.benchmark == "newcomer":
        from bench import newcomer

        return newcomer.main(rest)
    if args.benchmark == "experiment":
        from bench import experiment

        return experiment.main(rest)
    if args.benchmark == "gpu":
        from bench import gpu

        return gpu.main(rest)
    if args.benchmark == "dpo":
        from bench import dpo

        return dpo.main(rest)
    if args.benchmark == "memory":
        from bench import memory

        return memory.main(rest)
    if args.benchmark == "load":
        from bench import load

        return load.main(rest)
    if args.benchmark == "rag":
        from bench import rag

        return rag.main(rest) or 0
    from bench import train

    sys.argv = ["python -m bench train", *rest]  # train.main() parses its own arguments
    return train.main() or 0


if __name__ == "__main__":
    sys.exit(main())
