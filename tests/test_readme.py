"""The README's configuration table stays true to the settings."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import PROJECT_ROOT, Settings


def test_every_setting_is_documented_with_its_default() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(ATELIER_[A-Z_]+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    for name, field in Settings.model_fields.items():
        variable = f"ATELIER_{name.upper()}"
        assert variable in rows, f"{variable} is missing from the README"
        default = field.default
        if isinstance(default, Path):
            default = default.relative_to(PROJECT_ROOT)
        assert rows[variable] == str(default), variable
    assert set(rows) == {f"ATELIER_{n.upper()}" for n in Settings.model_fields}
