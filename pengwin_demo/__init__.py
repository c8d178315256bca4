"""Pelvic fracture segmentation in CT: PENGWIN-style fragments, meshes and reports.

Conventions: arrays are indexed (z, y, x); spacing tuples are in the
same (z, y, x) order, in millimetres; world coordinates are DICOM LPS millimetres.
"""

__version__ = "0.1.0"
