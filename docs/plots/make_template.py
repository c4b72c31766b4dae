"""Writes offline_template.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` fills an HTML template; its own loads the three libraries from cdn.jsdelivr.net,
so the page stays blank offline. This template has no `{scripts}` placeholder (where DVC puts those
CDN tags) and carries the libraries itself, so the page draws with no network at all. Inlined, not
linked: `dvc plots show -o DIR` writes DIR/index.html anywhere, where a relative path would miss.

The libraries are the versions DVC's template names (dvc_render.vega.VegaRenderer.SCRIPTS), their
npm build files as `npm pack` ships them, in vendor/ (BSD-3-Clause, vendor/LICENSE):

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2   # build/*.min.js of each

Run `python docs/plots/make_template.py` after replacing a file in vendor/.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARIES = [  # in load order: vega-embed needs the other two
    ("vega", "5.20.2", "vega.min.js"),
    ("vega-lite", "5.2.0", "vega-lite.min.js"),
    ("vega-embed", "6.18.2", "vega-embed.min.js"),
]
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")  # what dvc_render replaces

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Written by docs/plots/make_template.py: offline, no CDN. -->
%(scripts)s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def inline(name: str, version: str, file: str) -> str:
    code = (HERE / "vendor" / file).read_text(encoding="utf-8")
    digest = hashlib.sha256(code.encode("utf-8")).hexdigest()
    code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", code)  # the .map is not vendored
    code = code.replace("</script", "<\\/script")  # would end the inline element early
    for placeholder in PLACEHOLDERS:
        assert placeholder not in code, f"{file} contains {placeholder}, which DVC would replace"
    return (f"    <!-- {name}@{version} build/{file}, sha256 {digest}, BSD-3-Clause -->\n"
            f"    <script type=\"text/javascript\">\n{code.rstrip()}\n    </script>")


def template() -> str:
    return PAGE % {"scripts": "\n".join(inline(*library) for library in LIBRARIES)}


if __name__ == "__main__":
    (HERE / "offline_template.html").write_text(template(), encoding="utf-8")
