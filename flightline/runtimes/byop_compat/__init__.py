"""The folder put first on `sys.path` of a BYOP model's process (runtimes/byop.py), so that `import mac`
finds the compatibility package beside this file. It is imported as the top-level `mac` only: a model's
classes must extend the very classes the runtime checks against."""
