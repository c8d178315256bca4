"""``train-demo-models``: reproduce the bundled demo models from phantoms, end to end."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "train-demo-models"
HELP = "generate phantoms, build nnU-Net datasets and train the small demo anatomy and ABBC models"


def add_arguments(parser) -> None:
    parser.add_argument("--work-dir", default="demo_training",
                        help="scratch folder: phantoms, nnU-Net folders, logs (reused to resume)")
    parser.add_argument("--out", default=None,
                        help="where anatomy/ and abbc/ are written (default: the bundled models inside the package, pengwin_demo/models/bundled/)")
    parser.add_argument("--recipe", choices=("bootstrap", "demo"), default="demo",
                        help="bootstrap: a few minutes; demo: the bundled models (default)")
    parser.add_argument("--cases", type=int, default=24, help="training phantoms (default 24)")
    parser.add_argument("--seed", type=int, default=1, help="phantom seed of the training set (default 1)")
    parser.add_argument("--size", choices=("small", "full"), default="small", help="phantom size")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="training time budget per model, minutes (learning rate decays over it)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help="override the recipe's iterations per epoch")
    parser.add_argument("--extend", action="store_true",
                        help="continue finished trainings in --work-dir for --epochs more epochs within --max-minutes")
    parser.add_argument("--init-from", default=None, metavar="WORK_DIR",
                        help="continue the models of a finished run's work folder on this run's phantoms "
                             "(fine-tuning, e.g. --size full); implies --extend, needs --max-minutes")
    parser.add_argument("--sequential", action="store_true", help="train one model after the other")
    parser.add_argument("--only", choices=("anatomy", "abbc"), default=None, help="train one model only")


def run(args) -> int:
    from ..models import bundled_models_dir, resolve_device
    from ..training import train_demo_models

    if (args.extend or args.init_from) and args.max_minutes is None:
        print("error: --extend and --init-from continue a finished training and need a time budget: "
              "add --max-minutes N", file=sys.stderr)
        return 2
    device = resolve_device(args.device).type
    kinds = (args.only,) if args.only else ("anatomy", "abbc")
    out = train_demo_models(
        args.work_dir, Path(args.out) if args.out else bundled_models_dir(), recipe=args.recipe, cases=args.cases,
        seed=args.seed, size=args.size, device=device, threads=args.threads,
        parallel=not args.sequential, epochs=args.epochs, kinds=kinds,
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
        iterations_per_epoch=args.iterations_per_epoch, extend=args.extend, init_from=args.init_from,
    )
    for kind, folder in out.items():
        print(f"{kind}: {folder}")
    return 0
