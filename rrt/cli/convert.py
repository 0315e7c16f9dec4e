"""`rrt-convert`: convert a model and print what happened (source layers, N-emb before/after, time)."""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.conf import CONFIG_PATH


def mapping_lines(spec, num_layers: int) -> list[str]:
    from rrt.recursive.indices import depths_of_position, source_layers

    lines = []
    for position in range(num_layers // spec.loops):
        depths = depths_of_position(position, num_layers, spec.loops, spec.looping)
        sources = source_layers(spec.init, position, num_layers, spec.loops, spec.looping)
        origin = "random init" if spec.init == "random" else f"from layer(s) {sources}"
        lines.append(f"  shared layer {position:2d} {origin:28s} runs at depths {depths}")
    return lines


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="convert")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from rrt.factory.models import ModelChoice, architecture, num_layers, original_model
    from rrt.factory.plan import recursion_spec
    from rrt.recursive import convert_to_recursive, count_params
    from rrt.recursive.io import save_converted

    choice = ModelChoice.of(cfg.model)
    spec = recursion_spec(cfg)
    spec.validate(num_layers(architecture(choice)))
    model = original_model(choice, int(cfg.seed))
    before = count_params(model)
    num_layers = int(model.config.num_hidden_layers)
    start = time.perf_counter()
    convert_to_recursive(model, spec)
    seconds = time.perf_counter() - start
    after = count_params(model)
    print(
        f"{cfg.model.name}: {num_layers} layers -> {num_layers // spec.loops} shared x {spec.loops} loops "
        f"({spec.looping}, init={spec.init}, lora rank={spec.lora.rank}, {spec.lora.init})"
    )
    print("\n".join(mapping_lines(spec, num_layers)))
    print(
        f"N-emb: {before.non_embedding / 1e6:.2f}M -> {after.non_embedding / 1e6:.2f}M "
        f"(adapters {after.adapters / 1e6:.2f}M); embedding {after.embedding / 1e6:.2f}M unchanged"
    )
    print(f"converted in {seconds:.1f} s")
    if cfg.out:
        print(f"saved to {save_converted(model, Path(cfg.out))}")


if __name__ == "__main__":
    main()
