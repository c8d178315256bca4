"""Options shared by several commands."""

from __future__ import annotations


def add_allow_non_ct(parser) -> None:
    """``--allow-non-ct``: process an input whose values do not look like CT in HU."""
    parser.add_argument(
        "--allow-non-ct", action="store_true",
        help="process the input even when its values do not look like CT in Hounsfield units "
        "(MR, normalised 0..1 images, label maps; refused by default). Masked-bone CTs "
        "(zero outside the bone) are CT and need no override",
    )
