"""Training behind ``torchblocks train``: data, loop, checkpoints, DDP under torchrun.

``train(TrainConfig(...))`` runs a whole job (what the command does); ``Trainer`` is the epoch
loop on its own, for experiments that bring their own model and data. Runs unchanged under
``torchrun``: each process joins the job's process group (gloo on CPU, NCCL on GPU), takes its
share of every global batch through a ``DistributedSampler`` and trains a
``DistributedDataParallel`` model; rank 0 alone writes checkpoints and logs.
"""
from .build import INITS, build, check_input, default_input, initialize, resolve
from .checkpoint import load as load_checkpoint
from .data import Splits, digits, image_folder, stratified_split, stratified_subset
from .distributed import Context, context_from_env
from .loop import Trainer
from .run import OPTIMIZERS, TrainConfig, make_optimizer, train

__all__ = [
    "INITS",
    "OPTIMIZERS",
    "Context",
    "Splits",
    "TrainConfig",
    "Trainer",
    "build",
    "check_input",
    "context_from_env",
    "default_input",
    "digits",
    "image_folder",
    "initialize",
    "load_checkpoint",
    "make_optimizer",
    "resolve",
    "stratified_split",
    "stratified_subset",
    "train",
]
