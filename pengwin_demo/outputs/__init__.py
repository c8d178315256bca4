"""What a run writes: fragment meshes, the JSON report, DICOM SEG, Encapsulated STL, slice images.

Every name below is importable from ``pengwin_demo.outputs``; each is loaded with its module
on first use (scikit-image's lazy loading), so the app pays for trimesh or highdicom only
when it makes a mesh or a SEG.

- :mod:`.meshes`: label map -> one surface per fragment (LPS mm), STL files, coloured GLB.
- :mod:`.report`: ``report.json``: input, fragments, warnings, timings; no patient identifiers.
- :mod:`.seg`: label map -> DICOM Segmentation referencing the source CT.
- :mod:`.stl_dicom`: fragment STLs as DICOM Encapsulated STL instances beside the SEG.
- :mod:`.slices`: slice images for viewing: orientation, CT windows, label overlays.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "meshes": [
            "MESH_DETAILS", "MeshDetail", "fragment_meshes", "lps_to_gltf_matrix", "mask_mesh",
            "scene_glb", "stl_name", "write_scene_glb", "write_stls",
        ],
        "report": [
            "REPORT_VERSION", "build_report", "fragment_stats", "input_summary", "labels_present",
            "series_summary", "unused_series", "write_report",
        ],
        "seg": ["labels_to_seg", "segment_label", "write_dicom_seg"],
        "slices": [
            "AXES", "WINDOWS_HU", "extract_slice", "n_slices", "overlay_labels", "render_slice",
            "to_lps_orientation", "window_to_uint8",
        ],
        "stl_dicom": [
            "ENCAPSULATED_STL_STORAGE", "encapsulated_stl", "stl_from_instance", "stl_instances",
            "write_instance",
        ],
    },
)
