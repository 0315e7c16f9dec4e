"""`rrt-export`: a saved rrt model (or run dir) as a plain L-layer Hugging Face checkpoint, adapters also in PEFT."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrt.cli.errors import one_line_errors

DTYPES = ("float32", "bfloat16", "float16")


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="rrt-export", description=__doc__)
    cli.add_argument("model", help="a saved rrt model dir, or a run dir holding one in model/")
    cli.add_argument("out", type=Path, help="new dir for the plain checkpoint (relaxed models: also out/peft/)")
    cli.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    cli.add_argument(
        "--no-peft",
        dest="peft",
        action="store_false",
        help="skip the PEFT pair (out/peft/base: W' per depth, out/peft/adapter: one LoRA per depth)",
    )
    return cli


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from rrt.errors import UserError
    from rrt.factory.models import saved_model_dir
    from rrt.recursive.export import export
    from rrt.recursive.io import load_converted

    source = saved_model_dir(args.model)
    if source is None:
        raise FileNotFoundError(
            f"{args.model}: no saved rrt model here (a model dir with recursion.json and "
            "model.safetensors, or a run dir with model/)"
        )
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out} is not empty: export into a new dir")
    model = load_converted(source)
    tokenizer = AutoTokenizer.from_pretrained(source) if (source / "tokenizer_config.json").is_file() else None
    written = export(model, args.out, tokenizer=tokenizer, peft=args.peft, dtype=getattr(torch, args.dtype))
    print(f"plain {model.config.num_hidden_layers}-layer checkpoint: {written.merged}")
    if written.peft_adapter is not None:
        print(f"PEFT: base (W' per depth) {written.peft_base}, adapter (one LoRA per depth) {written.peft_adapter}")
    if tokenizer is None:
        print(f"{source} has no tokenizer: copy the base model's into {args.out}")


if __name__ == "__main__":
    main()
