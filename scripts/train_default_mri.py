"""Train the shipped default MRI model: ``python scripts/train_default_mri.py``.

Small CPU backbone, T = 3, single-coil 4× random Cartesian masks (centre fraction 0.08),
trained on axial slices of two average T1 heads that ship inside PyPI packages
(``pip install nilearn`` and ``pip install --no-deps pydeface``):

* the MNI152 ICBM 2009a template (nilearn), axial slices 55–110 held out: the bundled
  fastMRI samples are made from its slices 60, 75, 90 and 105;
* pydeface's ``mean_reg2mean.nii.gz`` (all axial slices).

Writes ``idm_med/pretrained/mri_4x`` (``IDM.from_pretrained``). The run checkpoints every
100 steps; rerunning the script resumes from the last checkpoint. (The shipped weights were
made with the training loop before it moved to :mod:`idm_med.train_loop`; the recipe is the
same, the patch sampling now that of :mod:`idm_med.patches`.)
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from idm_med import train_loop
from idm_med.training import TrainingConfig, load_training_images, train

OUTPUT = Path(__file__).resolve().parents[1] / "idm_med" / "pretrained" / "mri_4x"
HELD_OUT = list(range(55, 111))


def training_files() -> tuple[list[Path], dict[str, list[int]]]:
    import nilearn
    import pydeface

    mni = (
        Path(nilearn.__file__).parent
        / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    head = Path(pydeface.__file__).parent / "data/mean_reg2mean.nii.gz"
    return [mni, head], {mni.name: HELD_OUT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    files, exclude = training_files()
    data = load_training_images(files, axis=2, exclude_slices=exclude)
    logging.info("training on %d axial slices", len(data))
    config = TrainingConfig(
        operator={"name": "mri", "acceleration": 4, "center_fraction": 0.08, "mask_type": "random"},
        image_size=96,
        image_channels=2,
        backbone="small",
        steps=3,
        memory_mode="autograd",  # memory is not the constraint at 96²; autograd is fastest
        batch_size=4,
        loop=train_loop.LoopConfig(
            iterations=args.iterations,
            learning_rate=5e-4,
            warmup=1,
            halve_lr_every=400,
            ema_decay=0.0,
            checkpoint_every=100,
            seed=0,
        ),
    )
    resume = (args.output / "checkpoint").is_dir()
    train(config, args.output, data=data, resume=resume, progress=os.environ.get("CI") is None)


if __name__ == "__main__":
    main()
