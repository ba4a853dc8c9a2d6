"""Write the tiny random-weight Stable Diffusion and reward models (``model=tiny`` builds them itself on first use).

    python scripts/make_tiny_sd.py [OUT_DIR]        # default: outputs/cache/tiny_sd (what model=tiny reads)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion.models.tiny_sd import build  # noqa: E402

if __name__ == "__main__":
    out = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "outputs" / "cache" / "tiny_sd")
    print(f"tiny Stable Diffusion and reward models written to {out}")
