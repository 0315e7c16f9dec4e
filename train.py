"""Train a (Relaxed) Recursive Transformer: `python train.py init=stepwise lora.rank=512`."""

from rrt.cli.train import main

if __name__ == "__main__":
    main()
