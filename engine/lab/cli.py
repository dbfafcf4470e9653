"""``python -m engine lab {quant,lora,layers,spectrum,precision}``: the Lab's figures on the command line.

Every subcommand prints a readable summary, or with ``--json`` the same numbers the Lab tab shows, so
a course exercise can be checked in a terminal. The calibration flags are generated from
:class:`~engine.lab.quant.QuantSettings` (same defaults, choices and help as the Lab form).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from core.settings import base_type, describe
from engine.lab.quant import QuantSettings


def add_lab_parser(sub: Any) -> None:
    lab = sub.add_parser("lab", help="quantization & LoRA lab: calibration, layer errors, LoRA counts")
    cmds = lab.add_subparsers(dest="lab_command", required=True)
    quant = cmds.add_parser("quant", help="scale, zero point and each value's quantized/dequantized value and error")
    quant.add_argument("--values", required=True, help="numbers separated by commas, e.g. 0,250,1000")
    _add_quant_flags(quant)
    lora = cmds.add_parser("lora", help="exact LoRA trainable parameters for a rank and target modules")
    lora.add_argument("--r", type=int, default=8, help="LoRA rank")
    lora.add_argument("--alpha", type=float, help="LoRA alpha (default 2·r; only the scaling α/r depends on it)")
    lora.add_argument("--targets", default="all-linear", help="comma-separated module names, or all-linear")
    lora.add_argument("--model", help="base model id (default: the bundled model; Hub ids fetch config.json only)")
    layers = cmds.add_parser("layers", help="per-layer weight statistics, int8/NF4/FP4 errors and model sizes")
    layers.add_argument("--model", help="base model id (default: the bundled model)")
    layers.add_argument("--max-layers", type=int, help="walk only the first N weight matrices")
    spectrum = cmds.add_parser("spectrum", help="singular values of a finished run's learned updates B·A")
    spectrum.add_argument("--adapter", required=True, help="adapter folder of a finished run")
    precision = cmds.add_parser("precision", help="one prompt in full precision and NF4, with perplexity")
    precision.add_argument("--model", help="base model id (default: the bundled model)")
    precision.add_argument("--prompt", help="question both models answer")
    precision.add_argument("--text", help="text whose perplexity both models score")
    precision.add_argument("--max-new-tokens", type=int, default=40)
    for cmd in (quant, lora, layers, spectrum, precision):
        cmd.add_argument("--json", action="store_true", help="print machine-readable JSON")


def join_value_lists(argv: list[str]) -> list[str]:
    """``--values -20,1000`` -> ``--values=-20,1000``: argparse would read a list starting with a minus as a flag."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--values" and arg.startswith("-") and (arg[1:2].isdigit() or arg[1:2] == "."):
            out[-1] = f"--values={arg}"
        else:
            out.append(arg)
    return out


def _add_quant_flags(parser: argparse.ArgumentParser) -> None:
    for info in describe(QuantSettings):
        flag = "--" + info.name.replace("_", "-")
        if info.name == "signed":
            group = parser.add_mutually_exclusive_group()
            group.add_argument("--signed", dest="signed", action="store_true", default=None, help=info.spec.help)
            group.add_argument("--unsigned", dest="signed", action="store_false", help="unsigned integers")
            continue
        extra: dict[str, Any] = {"type": base_type(info.type)}
        if info.spec.choices:
            extra["choices"] = list(info.spec.choices)
        parser.add_argument(flag, dest=info.name, default=None, help=f"{info.spec.help} (default: {info.default})",
                            **extra)


def _token() -> str | None:
    """A CLI user's own token (their shell, their machine) for gated Hub models."""
    return os.environ.get("HF_TOKEN") or None


def cmd_quant(args: argparse.Namespace) -> dict[str, Any]:
    from engine.lab.quant import calibrate, parse_values

    values = {i.name: getattr(args, i.name) for i in describe(QuantSettings) if getattr(args, i.name) is not None}
    return calibrate(parse_values(args.values), QuantSettings.from_dict(values)).to_dict()


def cmd_lora(args: argparse.Namespace) -> dict[str, Any]:
    from engine.lab.lora import count_lora, meta_model_of, parse_targets

    label = args.model or "bundled SmolLM2-135M-Instruct"
    return count_lora(meta_model_of(args.model, _token()), args.r, parse_targets(args.targets), args.alpha,
                      label).to_dict()


def cmd_layers(args: argparse.Namespace) -> dict[str, Any]:
    from engine.lab.layers import analyse_folder
    from engine.models import model_folder

    report = analyse_folder(model_folder(args.model, _token()), args.model or "bundled", max_layers=args.max_layers)
    return report.to_dict()


def cmd_spectrum(args: argparse.Namespace) -> dict[str, Any]:
    from engine.lab.lora import adapter_spectrum, spectrum_summary

    folder = Path(args.adapter)
    if not (folder / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder.name or args.adapter} is not an adapter folder (no adapter_config.json).")
    return spectrum_summary(adapter_spectrum(folder))


def cmd_precision(args: argparse.Namespace) -> dict[str, Any]:
    from engine.lab import precision

    results = precision.compare_precisions(args.model, args.prompt or precision.DEFAULT_PROMPT,
                                           args.text or precision.DEFAULT_TEXT, max_new_tokens=args.max_new_tokens,
                                           token=_token())
    return {"results": precision.to_dicts(results)}


COMMANDS = {"quant": cmd_quant, "lora": cmd_lora, "layers": cmd_layers, "spectrum": cmd_spectrum,
            "precision": cmd_precision}


def run_lab(args: argparse.Namespace) -> int:
    result = COMMANDS[args.lab_command](args)
    print(json.dumps(result, indent=2, default=float) if args.json else _readable(args.lab_command, result))
    return 0


def _readable(command: str, result: dict[str, Any]) -> str:
    """A short human summary; ``--json`` has everything."""
    if command == "quant":
        lines = [f"scale {result['scale']:.6g}  zero point {result['zero_point']}  "
                 f"integers {result['qmin']}…{result['qmax']}", result["rule"]]
        lines += [f"{v['value']:>12.6g} → q {v['q']:>4} → {v['dequant']:.6g}  (error {v['error']:+.4g})"
                  for v in result["values"]]
        return "\n".join(lines + result["notes"])
    if command == "lora":
        lines = [f"{result['trainable_params']:,} trainable parameters ({result['share_of_base']:.3%} of "
                 f"{result['base_params']:,}), scaling α/r = {result['scaling']:g}"]
        lines += [f"  {k['kind']:<12} ×{k['count']:<3} r·({k['d_in']}+{k['d_out']}) → {k['params']:,}"
                  for k in result["by_kind"]]
        return "\n".join(lines)
    if command == "layers":
        sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in result["sizes_bytes"].items())
        return "\n".join([f"{len(result['layers'])} weight matrices walked", sizes, *result["notes"]])
    if command == "spectrum":
        return (f"{len(result['layers'])} adapted layers; the top direction carries "
                f"{result['mean_top1_share']:.0%} of each update on average, the top 4 {result['mean_top4_share']:.0%}")
    return "\n".join(f"{r['format']}: perplexity {r['perplexity']:.2f}, {r['footprint_bytes'] / 2**20:.0f} MiB, "
                     f"{r['seconds']:.1f} s\n  {r['answer']}" for r in result["results"])
