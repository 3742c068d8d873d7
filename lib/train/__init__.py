"""Stages 03-06 on accelerate: the resumable loop, stage 1 (contrastive), stage 2 (LM head),
stage 3 (continued pretraining), instruction tuning, DPO and the chat vector.
``python -m lib.train`` / ``accelerate launch -m lib.train`` run one stage (see ``__main__``).
May import: data, modeling, core."""
