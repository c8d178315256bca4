"""Stand-in for SimpleITK on the GPU lease only (its 53 MB wheel cannot travel there).

nnU-Net and pengwin_demo import SimpleITK at module level, but training reads nnU-Net's
preprocessed blosc2 files only; anything that really uses SimpleITK fails loudly here.
"""


def __getattr__(name):
    raise ImportError(f"SimpleITK.{name}: SimpleITK is not installed on this machine (stand-in module)")
