"""Where RSTPM's stage 1 ends, from the trainer's budget.

The paper trains the students 100 epochs, then the discriminator 300: stage 1 is the first
quarter. The trainer owns the budget (``max_epochs``, or ``max_steps``), so anomalib's Engine,
the CLI's ``--trainer.max_epochs`` and its integration tests (``max_epochs=1``) all work, and
the boundary is a pure function of the trainer's limits: a run resumed with the same limits
lands in the same stage.
"""

from __future__ import annotations

import math

STAGE1_SHARE = 0.25  # paper: 100 of 100 + 300 epochs


def _quarter(amount: float) -> int:
    """A quarter of ``amount``, rounded half up, at least 1."""
    return max(1, math.floor(amount * STAGE1_SHARE + 0.5))


def resolve_stage1_epochs(
    max_epochs: int | None,
    max_steps: int,
    num_training_batches: float,
    steps_per_stage1_batch: int = 1,
) -> int:
    """Stage-1 epochs when ``stage1_epochs`` is not given.

    - Bounded by epochs (``max_epochs > 0``, used even if ``max_steps`` is set too): a quarter of
      ``max_epochs`` rounded half up, at least 1; so ``max_epochs=4`` gives 1 + 3, 400 gives
      100 + 300, and ``max_epochs=1`` gives its single epoch to stage 1 (no stage 2).
    - Bounded by steps only (``max_epochs`` ``None`` or ``-1``, ``max_steps > 0``): a quarter of
      ``max_steps`` converted into whole epochs of ``num_training_batches`` batches. Under manual
      optimisation Lightning counts every ``optimizer.step()`` in ``global_step``, so a stage-1
      batch costs ``steps_per_stage1_batch`` steps (2 with ``loss_mode="split"``).

    Raises:
        ValueError: for an unbounded trainer, or a step budget with an unknown epoch length.
    """
    if max_epochs is not None and max_epochs > 0:
        return _quarter(max_epochs)
    if max_steps > 0:
        if not math.isfinite(num_training_batches) or num_training_batches <= 0:
            msg = (
                f"RSTPM cannot turn max_steps={max_steps} into stage-1 epochs: the number of training batches per "
                f"epoch is {num_training_batches}. Set stage1_epochs explicitly."
            )
            raise ValueError(msg)
        return _quarter(max_steps / (num_training_batches * steps_per_stage1_batch))
    msg = (
        "RSTPM derives stage 1 from the trainer's budget, but the trainer is unbounded "
        f"(max_epochs={max_epochs}, max_steps={max_steps}). Set trainer.max_epochs or stage1_epochs."
    )
    raise ValueError(msg)
