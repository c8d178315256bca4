"""``python -m pengwin_demo.training STEP ...``: one nnU-Net step in a child process.

:mod:`.nnunet_run` starts these with nnU-Net's folders in the environment (nnU-Net reads
them when it is imported); see :func:`.trainer.run_step`.
"""

import sys

from .trainer import run_step

sys.exit(run_step(sys.argv[1:]))
