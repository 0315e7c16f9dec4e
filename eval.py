"""Evaluate a run dir or a model with lm-eval and perplexity: `python eval.py run=<run dir> eval.exit_loops=[1,2]`."""

from rrt.cli.evaluate import main

if __name__ == "__main__":
    main()
