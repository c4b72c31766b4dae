"""Keras model files: saved with stable bytes, loaded with one-line errors."""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ferpipe.errors import ModelError
from ferpipe.files import atomic_path


def save_model(model: Any, path: Path | str) -> None:
    """Save `.keras` with stable bytes: fixed zip timestamps, no save date (dvc#4661).

    An uncompiled copy is saved, so no optimizer state bloats the file or the hash."""
    import keras

    path = Path(path)
    clean = keras.models.model_from_json(model.to_json())  # clone_model would keep compile state
    clean.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp_dir, atomic_path(path) as out:
        raw = Path(tmp_dir) / "raw.keras"
        clean.save(raw)
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for name in sorted(src.namelist()):
                payload = src.read(name)
                if name == "metadata.json":
                    meta = json.loads(payload)
                    meta.pop("date_saved", None)
                    payload = json.dumps(meta, sort_keys=True).encode()
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(info, payload)



def load_keras(path: Path | str) -> Any:
    """A .keras file, uncompiled; a file Keras cannot read is one ValueError naming it."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad file; the user needs one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: cannot load the model ({reason[:200]})") from err
