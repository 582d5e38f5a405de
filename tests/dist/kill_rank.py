"""``ltdistill`` as torchrun runs it, except that rank $KILL_RANK kills itself (SIGKILL, no
clean-up) when it is about to write the checkpoint of iteration $KILL_AT: the test of what
the other ranks do when one dies mid-run, and of --resume afterwards."""

import os
import signal
import sys

from ltdistill.cli import main
from ltdistill.methods import parts

_save = parts.Recorder.save


def save(self, iteration):
    if self.dist.rank == int(os.environ["KILL_RANK"]) and iteration >= int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    _save(self, iteration)


parts.Recorder.save = save
sys.exit(main(sys.argv[1:]))
