"""A compatibility package for the guide's Arbitrary Python (BYOP) API, `mac`, so that code written for
it runs unchanged: `mac.inference.Inference`, `mac.inference.creation.InferenceBuilder`,
`mac.config.inference.CustomInferenceConfig`, `mac.types.InferenceData` and
`mac.exceptions.InferenceDataValidationError`. Modules refer to each other relatively: the package is
imported as the top-level `mac` (see byop_compat/__init__.py)."""
