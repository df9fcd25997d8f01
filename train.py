"""Train a segmentation model: ``python train.py --config configs/quickstart.yaml`` (see seg/training/cli.py)."""

from seg.training.cli import main

if __name__ == "__main__":
    main()
