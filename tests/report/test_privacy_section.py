"""The report's Privacy section: ε and δ per round, σ, the clip bound and clipped share, and
whether the noise was seeded or cryptographic."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import records, toy_config

from fedfm.report import write_report


def _section(html: str, title: str) -> str:
    return html.split(f"<h2>{title}</h2>")[1].split("</section>")[0]


def test_a_private_run_reports_epsilon_per_round_and_seeded_noise(tmp_path: Path) -> None:
    # Prepare: two rounds of the toy job with clip + central noise calibrated to ε = 4
    from fedfm.run import run

    cfg = toy_config(
        'pipeline.uplink=[{name="clip", clip_norm=0.5}, {name="noise", mode="central"}]',
        "privacy.weighting=uniform",
        "privacy.target_epsilon=4",
        "rounds=2",
    )
    run(cfg, tmp_path)
    rows = records(tmp_path)[1:]
    # Execute
    html = write_report(tmp_path).read_text()
    # Assert: the section states the guarantee, its accounting and the noise source
    privacy = _section(html, "Privacy")
    eps = [r["noise/epsilon"] for r in rows]
    assert len(eps) == 2 and eps[0] < eps[1] <= 4.0
    assert f"(ε, δ) = ({eps[1]:.4g}, 1e-05) after round 2" in privacy
    assert "rdp accountant, fixed sampling of clients" in privacy
    assert f"central, σ = {rows[-1]['noise/noise_multiplier']:.4g}" in privacy
    assert "seeded from (seed, round, client)" in privacy and "ChaCha20" not in privacy
    assert "fixed bound" in privacy and "of client updates clipped" in privacy
    # ... a table of every privacy metric per round, and the curves
    header = re.findall(r"<th>([^<]+)</th>", privacy)
    for key in ("noise/epsilon", "noise/delta", "noise/noise_multiplier", "noise/clip_norm"):
        assert key in header, key
    assert "clip/clipped" in header and "noise/secure" in header
    assert "data:image/png" in privacy and (tmp_path / "report" / "privacy.png").exists()
    # ... and none of them lands in "Other metrics"
    assert "noise/" not in _section(html, "Other metrics")


def test_adaptive_clipping_dpsgd_and_cryptographic_noise_are_named(tmp_path: Path) -> None:
    # Prepare: the records of a deployed run (secure noise) with both kinds of DP
    rows = [{"round": 0, "accuracy": 0.5}]
    for r in (1, 2):
        rows.append(
            {
                "round": r,
                "accuracy": 0.6,
                "adaptive-clip/clipped": 0.5,
                "adaptive-clip/clip_norm": 0.1 * r,
                "adaptive-clip/unclipped_fraction": 0.4,
                "noise/epsilon": 1.5 * r,
                "noise/delta": 1e-5,
                "noise/noise_multiplier": 1.1,
                "noise/clip_norm": 0.1 * r,
                "noise/secure": 1.0,
                "dpsgd/epsilon": 0.7 * r,
                "dpsgd/secure": 1.0,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "privacy": {"accountant": "pld", "sampling": "poisson", "delta": 1e-5},
        "pipeline": {"uplink": [{"name": "adaptive-clip"}, {"name": "noise", "mode": "central"}]},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    # Execute
    privacy = _section(write_report(tmp_path).read_text(), "Privacy")
    # Assert
    assert "(ε, δ) = (3, 1e-05) after round 2" in privacy and "target ε</td><td>none" in privacy
    assert "pld accountant, poisson sampling of clients" in privacy
    assert "cryptographic: ChaCha20" in privacy and "seeded" not in privacy
    assert "adaptive bound; 50% of client updates clipped" in privacy
    assert "record-level DP-SGD" in privacy and "ε = 1.4 in round 2" in privacy
    assert "adaptive-clip/unclipped_fraction" in privacy


def test_clipping_alone_is_said_to_give_no_guarantee_and_plain_runs_show_none(
    tmp_path: Path,
) -> None:
    # Prepare: a clip-only run and a run without any privacy stage
    clip_only, plain = tmp_path / "clip", tmp_path / "plain"
    for path, extra in ((clip_only, {"clip/clipped": 0.25, "clip/norm": 2.0}), (plain, {})):
        path.mkdir()
        rows = [{"round": 1, "accuracy": 0.6, **extra}]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    uplink = {"pipeline": {"uplink": [{"name": "clip", "clip_norm": 1.0}]}}
    (clip_only / "config.json").write_text(json.dumps(uplink))
    # Execute
    clipped = _section(write_report(clip_only).read_text(), "Privacy")
    nothing = _section(write_report(plain).read_text(), "Privacy")
    # Assert
    assert "clipping without noise gives no guarantee" in clipped and "25%" in clipped
    assert "Not recorded in this run." in nothing
