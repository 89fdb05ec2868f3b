"""The process group of a training run (or a single process) and the device each process uses.

``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; without them the run is one process.
NCCL on GPU, gloo on CPU. Rank 0 is the main process: it writes files and talks to MLflow.
"""

from __future__ import annotations

import os


class Dist:
    """The process group (or a single process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.started_here = False

    def setup(self, device_type: str) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self.started_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t):
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def all_gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        box = [None] * self.world
        dist.all_gather_object(box, obj)
        return box

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def teardown(self) -> None:
        if self.enabled and self.started_here:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def select_device(dist: Dist):
    """This process's GPU (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        idx = dist.local_rank if dist.enabled else torch.cuda.current_device()
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    return torch.device("cpu")
