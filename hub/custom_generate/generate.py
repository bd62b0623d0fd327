"""Backtracking as a transformers ``custom_generate`` (see ../README.md).

``model.generate(**inputs, custom_generate="<this repository or directory>",
trust_remote_code=True, operator="probability-trend", ...)`` runs this file's ``generate`` with
``model.generate``'s own arguments. The decoding itself lives in the ``backtrack-decoding``
package: this file only hands the arguments on (``backtrack.hf.generate_from_arguments``).
"""

# Inside try: transformers checks a custom_generate file's imports and, for a missing one,
# suggests `pip install <module name>`, which for `backtrack` installs an unrelated project.
try:
    from backtrack.hf import generate_from_arguments
except ImportError as exc:
    raise ImportError(
        "this custom_generate needs the backtrack-decoding package: "
        "pip install backtrack-decoding"
    ) from exc


def generate(*args, model, **kwargs):
    """``model.generate``'s arguments (``model`` by keyword, as transformers passes it; a model
    whose ``generate`` this replaced passes its inputs positionally)."""
    return generate_from_arguments(model, *args, **kwargs)
