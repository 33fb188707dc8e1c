"""Starting pretraining's processes with torchrun: the same command on every node.

One node gets torchrun's standalone rendezvous: a private store on a free port under a random
id, so two experiments on one machine (`dvc exp run` queue workers) can neither meet nor fight
over a port. Several nodes meet at `pretrain.rdzv_endpoint` through torchrun's c10d backend.
torchrun runs in this process (it is the node's agent), so rendezvous failures become one-line
errors instead of tracebacks.
"""

from __future__ import annotations

import shlex
import signal
import sys
from typing import Callable, Sequence

from pixpro.config import PretrainConfig
from pixpro.errors import DistributedFailure


def worker_command(arguments: Sequence[str]) -> list[str]:
    """The argv that runs `pixpro <arguments>` with this very interpreter: found without PATH (a
    virtual environment's bin need not be on it), and the same environment as the launcher."""
    return [sys.executable, "-m", "pixpro.stages.cli", *arguments]


def torchrun_arguments(cfg: PretrainConfig, command: Sequence[str]) -> list[str]:
    """torchrun's arguments for one node: each of its `cfg.nproc` processes runs `command` (an
    argv such as worker_command(["pretrain", ...])). Every node gets the same list."""
    if cfg.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        # A node that never joins stops the others after ddp_timeout_s, as a dead peer does later.
        rendezvous = ["--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
                      "--rdzv-conf", f"join_timeout={cfg.ddp_timeout_s}"]
    return [*rendezvous, "--nproc-per-node", str(cfg.nproc), "--no-python", *command]


def launch(cfg: PretrainConfig, command: Sequence[str], log: Callable[[str], None] = print) -> int:
    """Run this node's processes under torchrun until they end; returns their exit code (0, or
    that of the first to fail, which has printed its own error). Raises DistributedFailure when
    the nodes cannot meet or a process is killed by a signal."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import (RendezvousConnectionError, RendezvousError,
                                                      RendezvousTimeoutError)
    from torch.distributed.run import parse_args, run

    arguments = torchrun_arguments(cfg, command)
    if cfg.nnodes > 1:
        log(f"waiting up to {cfg.ddp_timeout_s} s for {cfg.nnodes} nodes at {cfg.rdzv_endpoint}; on every other node "
            f"run the same `pixpro pretrain --launch ...`, or: torchrun {shlex.join(arguments)}")
    try:
        run(parse_args(arguments))
    except RendezvousTimeoutError:
        raise DistributedFailure(f"not all pretrain.nnodes = {cfg.nnodes} nodes joined the rendezvous at "
                                 f"{cfg.rdzv_endpoint} within {cfg.ddp_timeout_s} s (pretrain.ddp_timeout_s): start "
                                 f"the same command on every node, with the same params") from None
    except RendezvousConnectionError:
        raise DistributedFailure(f"lost, or never reached, torchrun's rendezvous store at {cfg.rdzv_endpoint}: the "
                                 f"node at that address died or is unreachable, or pretrain.rdzv_endpoint is wrong; "
                                 f"rerun on every node to resume from the last checkpoint") from None
    except RendezvousError as err:
        raise DistributedFailure(f"torchrun's rendezvous at {cfg.rdzv_endpoint} failed ({type(err).__name__}"
                                 f"{': ' + str(err).splitlines()[0][:160] if str(err) else ''})") from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode < 0:  # killed: it could not say why itself
            raise DistributedFailure(f"rank {rank} was killed by {failure.signal_name()}; rerun to resume from "
                                     f"the last checkpoint") from None
        return failure.exitcode
    except SignalException as err:  # torchrun has already stopped this node's processes
        log(f"stopped by {signal.Signals(err.sigval).name}; rerun to resume from the last checkpoint")
        return 128 + int(err.sigval)
    return 0
