"""Training: nnU-Net data sets, the training runs, the recipes and the model cards.

Names load with their module on first use.

- :mod:`.datasets`: PENGWIN-layout cases -> the ABBC and anatomy nnU-Net raw datasets.
- :mod:`.nnunet_run`: the ``3d_demo`` configuration, planning, preprocessing and training in
  child processes (``python -m pengwin_demo.training``), and the inference-only export.
- :mod:`.trainer`: the child-process side, with the demo trainer (time budget, initial weights).
- :mod:`.demo`: the bundled demo models from phantoms, end to end (``train-demo-models``).
- :mod:`.real_abbc`: the ABBC model on real bone-masked pelves (``train-abbc``).
- :mod:`.composite`: real masked pelves placed in synthetic bodies.
- :mod:`.in_body`: those bodies cut and masked as Stage 2 sees a real scan (ABBC cases).
- :mod:`.whole_ct`: real whole CTs with bone masks as further anatomy training cases.
- :mod:`.real_anatomy`: the anatomy model on those composites (``train-anatomy``).
- :mod:`.cards`: model cards and the training-log summary.
- :mod:`.quality`: held-out phantom figures of a pair of models.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "datasets": ["find_cases", "prepare_datasets", "to_canonical", "verify_raw_dataset",
                     "dataset_folder_name", "DEMO_CONFIGURATION"],
        "nnunet_run": ["DemoConfig", "NnunetDirs", "demo_plans_entry", "init_from_run", "plan_and_preprocess",
                       "preprocess_only", "preprocessed_ready", "strip_model", "train"],
        "demo": ["DEMO_CONFIGS", "TRAIN_SEED", "train_demo_models"],
        "real_abbc": ["REAL_ABBC_CONFIG", "train_real_abbc", "write_training_cases"],
        "composite": ["CompositeOptions", "composite_case", "mirror_case", "pelvis_box_crop", "pelvis_free_crop"],
        "in_body": ["in_body_case", "stage1_like_mask"],
        "real_anatomy": ["REAL_ANATOMY_CONFIG", "REFINE_ANATOMY_CONFIG", "AnatomyView", "train_real_anatomy",
                         "write_composite_cases"],
        "whole_ct": ["find_whole_ct_cases", "read_whole_ct_case", "scan_digest", "whole_ct_variant",
                     "write_whole_ct_cases"],
        "cards": ["training_summary", "write_model_card"],
        "quality": ["evaluate_models"],
    },
)
