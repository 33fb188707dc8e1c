"""experiments/results_doc.py: the generated results doc against numbers worked out by hand on
tiny CSVs, and the committed docs/results.md and README blocks against what it generates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pixpro.errors import DataError
from tests.conftest import load_experiment

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("setting,seed,pretrained_miou,random_miou,gain,pretrained_knn_miou,random_knn_miou,knn_gain,"
          "pretrained_p1,random_p1,partner_gap,feature_std,effective_rank,target_drift,loss,seconds\n")
# Gains base 0.05, 0.07 and new 0.08, 0.09 (probe); kNN gains all 0.01 except new seed 1 (0.03).
ROWS = ["base,0,0.20,0.15,0.99,0.20,0.19,0,0.3,0.2,0.1,0.1,30,0.04,8.0,100",
        "base,1,0.22,0.15,0.99,0.20,0.19,0,0.3,0.2,0.1,0.1,30,0.04,8.0,",
        "new,1,0.24,0.15,0.99,0.22,0.19,0,0.3,0.2,0.2,0.1,30,0.04,8.0,100",
        "new,0,0.23,0.15,0.99,0.20,0.19,0,0.3,0.2,0.2,0.1,30,0.04,8.0,100"]
STUDIES = """
machines: {box: a 2-core test box}
headline:
  - {study: tiny, setting: new, data: tiny data}
studies:
  tiny:
    title: A tiny study
    about: Two settings, two seeds.
    rerun: -S threads=1
    settings: {base: "", new: -S pretrain.ppm.window=9}
    baseline: base
    finetune: true
    labels_saved: true
    provenance:
      - {date: 2026-01-01, machine: box, threads: 1}
      - {setting: [new], seed: [1], threads: 2}
"""

# A per-measurement study (stage_diagnostics, image_signature kinds) run on one box.
PER_MEASUREMENT_STUDY = {"data_names": {"syn": "synthetic"},
                         "provenance": [{"date": "2026-01-01", "machine": "box", "threads": 2}]}
BOX_SPEC = {"machines": {"box": "a box"}}


@pytest.fixture(scope="module")
def results_doc():
    return load_experiment("results_doc")


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.csv").write_text(HEADER + "\n".join(ROWS) + "\n")
    (tmp_path / "studies.yaml").write_text(STUDIES)
    runs = tmp_path / "tiny_curves"
    # Seed 0 from the finetune JSONs, seed 1 from its summary.md table.
    (runs / "new_seed0").mkdir(parents=True)
    for backbone, scores in (("pretrained", (0.30, 0.40)), ("random", (0.25, 0.30))):
        (runs / "new_seed0" / f"finetune_{backbone}.json").write_text(json.dumps(
            {"miou_5pct": scores[0], "miou_100pct": scores[1], "labelled_images_5pct": 1}))
    (runs / "new_seed1").mkdir()
    (runs / "new_seed1" / "summary.md").write_text(
        "## Label efficiency\n\n| | pretrained | random | gain |\n|:--|--:|--:|--:|\n"
        "| 5% of the labels (1 images) | 0.3400 | 0.2600 | 0.0800 |\n"
        "| 100% of the labels (20 images) | 0.4200 | 0.3000 | 0.1200 |\n")
    return tmp_path


def line_starting(text: str, start: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def test_tables_match_hand_computed_statistics(results_doc, tiny):
    text = results_doc.render_results(tiny)
    # base gains 5, 7 points: mean 6, std sqrt(2); t(0.975, 1) = 12.706 -> 6 ± 12.706 * sqrt(2) / sqrt(2).
    # The CSV's own gain column (0.99) is ignored: gains come from the scores.
    assert line_starting(text, "| base | 0,1 |") == (
        "| base | 0,1 | 21.0 ± 1.4 | 15.0 ± 0.0 | +6.0 ± 1.4 [-6.7, +18.7] | +1.0 ± 0.0 [+1.0, +1.0] | 2/2 |")
    # new - base per seed: +3, +2 probe (mean 2.5, std 0.707, half 12.706 * 0.5 = 6.35); kNN +0, +2.
    assert line_starting(text, "| new | 0,1 | +2.5") == (
        "| new | 0,1 | +2.5 ± 0.7 [-3.9, +8.9] | +1.0 ± 1.4 [-11.7, +13.7] | +3.0, +2.0 | unclear |")
    # Every run, seeds in order, with its provenance: new seed 1 overrides the thread count.
    assert line_starting(text, "| new | 0 |").endswith("| 2026-01-01 | `box` | 1 |")
    assert line_starting(text, "| new | 1 |").endswith("| 2026-01-01 | `box` | 2 |")
    assert line_starting(text, "| base | 1 |").split(" | ")[10] == "—"  # no wall time recorded
    # Fine-tuning: seed 0 from JSON (gains 5, 10), seed 1 from summary.md (gains 8, 12).
    assert line_starting(text, "| new | 5% |") == (
        "| new | 5% | 0,1 | 32.0 ± 2.8 | 25.5 ± 0.7 | +6.5 ± 2.1 [-12.6, +25.6] | +5.0, +8.0 |")
    assert line_starting(text, "| new | 100% |").endswith("| +10.0, +12.0 |")
    assert "| base | 5% |" not in text  # base has no fine-tuning scores
    # Labels saved: both seeds reach random's 100% score (30) already at 5%.
    assert line_starting(text, "| new | 0,1 | 100% |") == "| new | 0,1 | 100% | >= 20x, >= 20x | >= 20x |"
    # Only where the study says its budget is meant to converge.
    (tiny / "studies.yaml").write_text(STUDIES.replace("    labels_saved: true\n", ""))
    assert "labels saved per seed" not in results_doc.render_results(tiny)
    assert "| `box` | a 2-core test box |" in text
    # The recipe: each setting queued over the CSV's seeds, and compare on the committed rows.
    assert "dvc exp run --queue -S seed=0,1 -S threads=1 -S pretrain.ppm.window=9  # new" in text
    assert ("pixpro compare --results experiments/results/tiny.csv --baseline setting=base "
            "--metric finetune.miou_5pct --metric finetune.miou_100pct") in text


def test_labels_saved_table_per_seed_and_median(results_doc):
    import pandas as pd
    # Random reaches 40 with all labels. Seed 0 crosses 40 halfway between 5% (30) and 20% (50): 10x;
    # seed 1 is at 45 already at 5%: >= 20x; seed 2 never reaches 40: none.
    scores = {0: ((0.30, 0.50, 0.55), (0.2, 0.3, 0.40)), 1: ((0.45, 0.5, 0.6), (0.2, 0.3, 0.40)),
              2: ((0.20, 0.30, 0.39), (0.2, 0.3, 0.40))}
    frame = pd.DataFrame([{"setting": "new", "seed": seed,
                           **{f"{backbone}_finetune.miou_{p}pct": value
                              for backbone, values in zip(("pretrained", "random"), curves)
                              for p, value in zip((5, 20, 100), values)}}
                          for seed, curves in scores.items()])
    text = "\n".join(results_doc.labels_saved_table(frame))
    assert line_starting(text, "| new |") == "| new | 0,1,2 | 100% | 10x, >= 20x, none | 10x |"
    text = "\n".join(results_doc.labels_saved_table(frame[frame["seed"] < 2]))
    assert line_starting(text, "| new |") == "| new | 0,1 | 100% | 10x, >= 20x | between 10x and >= 20x |"
    # A seed whose random network gains nothing from more labels has no figure, and no rank.
    flat = frame.assign(**{"random_finetune.miou_100pct": [0.40, 0.40, 0.1]})
    text = "\n".join(results_doc.labels_saved_table(flat))
    assert line_starting(text, "| new |") == "| new | 0,1,2 | 100% | 10x, >= 20x, not converged | between 10x and >= 20x |"
    # One fraction is no curve: no row.
    assert results_doc.labels_saved_table(frame.drop(columns=[c for c in frame if "pct" in c and "100pct" not in c])) == []


def test_stage_diagnostics_table_matches_hand_computed_means(results_doc):
    import pandas as pd
    columns = ["data", "setting", "seed", "backbone", "bn", "stage", "miou", "image_share", "class_share"]
    rows = [["syn", "default", seed, backbone, bn, stage, miou, image, klass]
            for seed in (0, 1)
            for backbone, miou, image, klass in (("pretrained", 0.15, 0.30, 0.08), ("random", 0.18, 0.06, 0.20))
            for bn in ("as_saved", "recalibrated")
            for stage in ("-5", "all")]
    frame = pd.DataFrame(rows, columns=columns)
    frame.loc[(frame["seed"] == 1) & (frame["backbone"] == "pretrained"), "miou"] += 0.02
    frame.loc[frame["bn"] == "recalibrated", "miou"] = 0.99  # tabled apart, beside the as-saved score
    study, spec = PER_MEASUREMENT_STUDY, BOX_SPEC
    text = "\n".join(results_doc.stage_tables(frame, study, spec))
    # Pretrained 15, 17 points (mean 16, std 1.4); random 18, 18; gains -3, -1: mean -2, half 12.706 * 1 / 1.
    assert line_starting(text, "| synthetic | `default` | 0,1 | 1/16 res |") == (
        "| synthetic | `default` | 0,1 | 1/16 res | 16.0 ± 1.4 | 18.0 ± 0.0 | -2.0 ± 1.4 [-14.7, +10.7] "
        "| 0.300 / 0.060 | 0.080 / 0.200 | 2026-01-01 | `box` | 2 |")
    assert "| all five |" in text
    assert line_starting(text, "| synthetic | `default` | 1 | pretrained | 1/16 res |") == (
        "| synthetic | `default` | 1 | pretrained | 1/16 res | 17.0 | 99.0 |")
    assert "99.0 ±" not in text
    # Another setting of seed 1 only: its gain (21 - 18 = +3) minus default's seed-1 gain (-1) = +4.0.
    other = frame[(frame["seed"] == 1) & (frame["bn"] == "as_saved")].assign(setting="new")
    other.loc[other["backbone"] == "pretrained", "miou"] = 0.21
    text = "\n".join(results_doc.stage_tables(pd.concat([other, frame]), study, spec))
    assert text.index("| synthetic | `default` |") < text.index("| synthetic | `new` |")  # the baseline first
    assert line_starting(text, "| synthetic | `new` | 1 | 1/16 res | +4.0") == "| synthetic | `new` | 1 | 1/16 res | +4.0 ± n/a |"
    # A setting paired with the baseline the study names for it: newer's gain (+3) minus new's (+3), not default's.
    newer = other.assign(setting="newer")
    newer.loc[newer["backbone"] == "pretrained", "miou"] = 0.21
    text = "\n".join(results_doc.stage_tables(pd.concat([other, newer, frame]), {**study, "baselines": {"newer": "new"}},
                                              spec))
    assert line_starting(text, "| synthetic | `newer` − `new` | 1 | 1/16 res |") == (
        "| synthetic | `newer` − `new` | 1 | 1/16 res | +0.0 ± n/a |")


def test_readme_blocks_are_replaced_in_place(results_doc, tiny, tmp_path):
    metrics = tmp_path / "metrics"
    for kind, key, scores in (("segmentation", "miou", (0.2, 0.1)), ("retrieval", "knn_miou", (0.3, 0.25)),
                              ("finetune", "miou_50pct", (0.5, 0.4))):
        (metrics / kind).mkdir(parents=True)
        for backbone, score in zip(("pretrained", "random"), scores):
            extra = {"precision@1": 0.5} if kind == "retrieval" else {}
            (metrics / kind / f"{backbone}.json").write_text(json.dumps({key: score, **extra}))
    readme = ("intro\n<!-- results_doc:headline -->\nold\n<!-- /results_doc:headline -->\nmiddle\n"
              "<!-- results_doc:quickstart -->\n<!-- /results_doc:quickstart -->\nend\n")
    text = results_doc.render_readme(readme, tiny, metrics)
    assert text.startswith("intro\n<!-- results_doc:headline -->\n| data |") and text.endswith("end\n")
    assert "old" not in text
    assert "| tiny data | 0,1 | 23.5 ± 0.7 | 15.0 ± 0.0 | +8.5 ± 0.7 [+2.1, +14.9] |" in text
    assert "| probe mIoU (`metrics/segmentation/`) | 20.00 | 10.00 | +10.00 |" in text
    assert "| fine-tuned on 50% of the labels (`metrics/finetune/`) | 50.00 | 40.00 | +10.00 |" in text
    assert results_doc.render_readme(text, tiny, metrics) == text  # idempotent


def test_missing_inputs_are_one_line_errors(results_doc, tiny):
    with pytest.raises(DataError, match="has no <!-- results_doc:headline -->"):
        results_doc.render_readme("no blocks here\n", tiny, tiny)
    (tiny / "tiny.csv").unlink()
    with pytest.raises(DataError, match=r"study 'tiny' has no .*tiny\.csv"):
        results_doc.render_results(tiny)


def test_unknown_machine_is_refused(results_doc, tiny):
    (tiny / "studies.yaml").write_text(STUDIES.replace("machine: box", "machine: laptop"))
    with pytest.raises(DataError, match="names machine 'laptop'"):
        results_doc.render_results(tiny)


def test_committed_docs_are_what_the_script_generates(results_doc):
    """docs/results.md and README.md's blocks come from the committed rows and metrics: rerun
    `python experiments/results_doc.py` after changing either."""
    results = ROOT / "experiments/results"
    assert (ROOT / "docs/results.md").read_text(encoding="utf-8") == results_doc.render_results(results)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == results_doc.render_readme(readme, results, ROOT / "metrics")


def embedded_pictures() -> dict[Path, Path]:
    """{picture: the Markdown file embedding it} over README.md and docs/*.md."""
    found = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            found[(page.parent / link).resolve()] = page
    return found


def test_every_docs_picture_is_embedded_and_every_embedded_picture_exists():
    pictures = embedded_pictures()
    missing = [f"{page.name}: {path}" for path, page in pictures.items() if not path.is_file()]
    assert not missing, missing
    unused = [p.name for p in sorted((ROOT / "docs").glob("*.png")) if p.resolve() not in pictures]
    assert not unused, f"docs pictures no page embeds (delete them): {unused}"
    # make refresh redraws every docs/*.png: each is one of the picture script's outputs.
    script = load_experiment("docs_pictures")
    drawn = {"docs/pairs.png", *script.CURVES, script.IDD_OVERLAYS[2], script.CONVERGENCE[1]}
    if (ROOT / script.LABEL_EFFICIENCY[0]).is_file():  # issue 27's study, once its rows exist
        drawn.add(script.LABEL_EFFICIENCY[2])
    in_docs = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.png")}
    assert in_docs == drawn


def label_study_rows():
    """experiments/label_study.py rows: seeds 0 and 1 finished, seed 2 still running (pretrained only).
    (seed, fraction): pretrained fine-tuned, random fine-tuned, pretrained probe."""
    import pandas as pd
    scores = {(0, 0.05): (0.30, 0.20, 0.25), (0, 1.0): (0.40, 0.35, 0.38),
              (1, 0.05): (0.34, 0.22, 0.27), (1, 1.0): (0.42, 0.37, 0.40)}
    rows = []
    for (seed, fraction), (pretrained, random, probe) in scores.items():
        for backbone, tuned, frozen in (("pretrained", pretrained, probe), ("random", random, probe - 0.1)):
            rows.append(["syn", "stages", seed, backbone, fraction, int(fraction * 20), frozen, tuned])
    rows.append(["syn", "stages", 2, "pretrained", 0.05, 1, 0.2, 0.3])
    return pd.DataFrame(rows, columns=["data", "setting", "seed", "backbone", "fraction", "labelled_images",
                                       "probe_miou", "finetuned_miou"]).assign(steps=1000)


def test_label_efficiency_table_matches_hand_computed_statistics(results_doc):
    text = "\n".join(results_doc.label_efficiency_tables(label_study_rows(), PER_MEASUREMENT_STUDY, BOX_SPEC))
    assert "synthetic, `stages`, 1000 steps (2026-01-01, `box`, 2 threads)" in text
    # 5%: gains +10, +12 (mean 11, std sqrt(2), half-width 12.706); fine-tuning adds +5, +7 to the probe.
    assert line_starting(text, "| 5% |") == (
        "| 5% | 1 | 0,1 | 32.0 ± 2.8 | 21.0 ± 1.4 | +11.0 ± 1.4 [-1.7, +23.7] | +10.0, +12.0 | 26.0 ± 1.4 "
        "| +6.0 ± 1.4 [-6.7, +18.7] |")
    assert line_starting(text, "| 100% |").startswith("| 100% | 20 | 0,1 | 41.0 ± 1.4 | 36.0 ± 1.4 |")
    # Labels saved: seed 0 reaches 35 halfway (in log) from 5% (30) to 100% (40): sqrt(0.05) = 1/4.47;
    # seed 1 reaches 37 at 3/8 of the way from 34 to 42: 0.05 ** (5/8) = 1/6.5. Seed 2 is left out.
    assert line_starting(text, "| stages |") == "| stages | 0,1 | 100% | 4.5x, 6.5x | between 4.5x and 6.5x |"


def test_each_fine_tuning_recipe_has_its_table_and_crop_orders_count_as_their_mean(results_doc):
    import pandas as pd

    plain = label_study_rows().assign(ema_decay=0.0, crop_seed=0)
    averaged = plain[plain["seed"] < 2].assign(ema_decay=0.995)
    # A second crop order for every averaged row: pretrained 4 points higher, random unchanged.
    again = averaged.assign(crop_seed=1, finetuned_miou=averaged["finetuned_miou"]
                            + 0.04 * (averaged["backbone"] == "pretrained"))
    # Another loss recipe of the same seeds: random 2 points higher everywhere.
    balanced = averaged.assign(class_weighting="balanced", finetuned_miou=averaged["finetuned_miou"]
                               + 0.02 * (averaged["backbone"] == "random"))
    rows = pd.concat([plain, averaged, again, balanced], ignore_index=True)
    text = "\n".join(results_doc.label_efficiency_tables(rows, PER_MEASUREMENT_STUDY, BOX_SPEC))
    assert "synthetic, `stages`, 1000 steps (2026" in text
    heading = "synthetic, `stages`, 1000 steps, weights averaged (`ema_decay: 0.995`)"
    assert f"{heading}, 2–2 crop orders a seed (their mean)" in text
    assert f"{heading}, `class_weighting: balanced` (2026" in text
    first, second, third = text.split("weights averaged")
    assert line_starting(first, "| 5% |").startswith("| 5% | 1 | 0,1 | 32.0 ± 2.8 | 21.0 ± 1.4 | +11.0")
    assert line_starting(second, "| 5% |").startswith("| 5% | 1 | 0,1 | 34.0 ± 2.8 | 21.0 ± 1.4 | +13.0")
    assert line_starting(third, "| 5% |").startswith("| 5% | 1 | 0,1 | 32.0 ± 2.8 | 23.0 ± 1.4 | +9.0")


def test_label_efficiency_picture_from_a_studys_rows(tmp_path):
    from PIL import Image

    script = load_experiment("docs_pictures")
    label_study_rows().to_csv(tmp_path / "study.csv", index=False)
    out = tmp_path / "label_efficiency.png"
    script.label_efficiency(tmp_path / "study.csv", "stages", str(out))
    assert Image.open(out).size[0] > 300
    with pytest.raises(SystemExit, match="no seed of setting 'nope'"):
        script.label_efficiency(tmp_path / "study.csv", "nope", str(out))
    with pytest.raises(SystemExit, match="no seed of setting 'stages' and ema_decay 0.995"):
        script.label_efficiency(tmp_path / "study.csv", "stages", str(out), {"ema_decay": 0.995})  # no such rows
    import pandas as pd

    balanced = label_study_rows().assign(class_weighting="balanced", ema_decay=0.995)
    pd.concat([label_study_rows(), balanced]).to_csv(tmp_path / "study.csv", index=False)
    script.label_efficiency(tmp_path / "study.csv", "stages", str(out),
                            {"ema_decay": 0.995, "class_weighting": "balanced"})
    with pytest.raises(SystemExit, match="class_weighting balanced"):
        script.label_efficiency(tmp_path / "study.csv", "stages", str(out), {"class_weighting": "balanced"})
    # Two budgets of one recipe are not averaged into one curve: steps must be named.
    longer = label_study_rows().assign(steps=2000, finetuned_miou=0.5)
    pd.concat([label_study_rows(), longer]).to_csv(tmp_path / "study.csv", index=False)
    with pytest.raises(SystemExit, match="rows of several recipes for setting 'stages': name steps"):
        script.label_efficiency(tmp_path / "study.csv", "stages", str(out))
    script.label_efficiency(tmp_path / "study.csv", "stages", str(out), {"steps": 2000})


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (code blocks skipped)."""
    anchors, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        in_code ^= line.startswith("```")
        if not in_code and line.startswith("#"):
            anchors.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return anchors


def test_every_relative_link_of_the_docs_resolves():
    """A section moved or renamed in README.md or docs/ must not leave links pointing nowhere."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path, _, anchor = link.partition("#")
            if re.match(r"[a-z]+:", path):
                continue  # a web address
            target = (page.parent / path).resolve() if path else page
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in heading_anchors(target)):
                broken.append(f"{page.name}: {link}")
    assert not broken, broken


def test_signature_table_matches_hand_computed_means(results_doc):
    import pandas as pd
    columns = ["data", "setting", "seed", "backbone", "stage", "signature_variance", "r2_colour", "r2_classes",
               "r2_both"]
    rows = [["syn", "default", 0, "pretrained", "-5", 0.10, 0.70, -0.02, 0.70],
            ["syn", "default", 1, "pretrained", "-5", 0.14, 0.60, 0.00, 0.64],
            ["syn", "default", 0, "random", "-5", 0.006, 0.50, -0.04, 0.50],
            ["syn", "default", 1, "random", "-5", 0.010, 0.54, -0.002, 0.54],
            ["syn", "new", 0, "pretrained", "-1", 0.05, 0.30, 0.10, 0.35]]
    frame = pd.DataFrame(rows, columns=columns)
    study, spec = PER_MEASUREMENT_STUDY, BOX_SPEC
    text = "\n".join(results_doc.signature_tables(frame, study, spec))
    # Means over seeds: variance 0.12 against 0.008 (15.0x), R2 colour 0.65 / 0.52, classes -0.01 / -0.021
    # (shown -0.02), both 0.67 / 0.52.
    assert line_starting(text, "| synthetic | `default` | 0,1 | 1/16 res |") == (
        "| synthetic | `default` | 0,1 | 1/16 res | 0.1200 / 0.0080 | 15.0× | 0.65 / 0.52 | -0.01 / -0.02 "
        "| 0.67 / 0.52 | 2026-01-01 | `box` | 2 |")
    # A setting measured without its random twin shows no ratio.
    assert line_starting(text, "| synthetic | `new` | 0 | output |") == (
        "| synthetic | `new` | 0 | output | 0.0500 / — | — | 0.30 / — | 0.10 / — | 0.35 / — | 2026-01-01 | `box` | 2 |")


def test_position_table_matches_hand_computed_means(results_doc):
    import pandas as pd
    columns = ["data", "setting", "seed", "backbone", "stage", "cells", "r2_row", "r2_column"]
    rows = [["syn", "default", 0, "pretrained", -5, 10, 0.90, 0.70],
            ["syn", "default", 1, "pretrained", -5, 10, 0.86, 0.62],
            ["syn", "default", 0, "random", -5, 10, 0.98, 0.95],
            ["syn", "default", 1, "random", -5, 10, 0.96, 0.91]]
    text = "\n".join(results_doc.position_tables(pd.DataFrame(rows, columns=columns), PER_MEASUREMENT_STUDY, BOX_SPEC))
    # Means over seeds: row 0.88 against 0.97, column 0.66 against 0.93; no ratio column.
    assert line_starting(text, "| synthetic | `default` | 0,1 | 1/16 res |") == (
        "| synthetic | `default` | 0,1 | 1/16 res | 0.88 / 0.97 | 0.66 / 0.93 | 2026-01-01 | `box` | 2 |")


def test_a_setting_measured_without_its_random_twin_borrows_the_seeds_twin(results_doc):
    import pandas as pd
    columns = ["data", "setting", "seed", "backbone", "bn", "stage", "miou", "image_share", "class_share"]
    rows = [["syn", "default", 0, "pretrained", "as_saved", "-5", 0.15, 0.30, 0.08],
            ["syn", "default", 0, "random", "as_saved", "-5", 0.18, 0.06, 0.20],
            ["syn", "default", 1, "pretrained", "as_saved", "-5", 0.52, 0.30, 0.08],
            ["syn", "default", 1, "random", "as_saved", "-5", 0.50, 0.06, 0.20],  # another seed's twin: not used
            ["syn", "new", 0, "pretrained", "as_saved", "-5", 0.21, 0.10, 0.15]]
    frame = pd.DataFrame(rows, columns=columns)
    text = "\n".join(results_doc.stage_tables(frame, {**PER_MEASUREMENT_STUDY, "data_names": {}}, BOX_SPEC))
    # new: 21 against seed 0's random 18 = +3.0; paired with default's -3.0: +6.0.
    assert line_starting(text, "| syn | `new` | 0 | 1/16 res | 21.0").startswith(
        "| syn | `new` | 0 | 1/16 res | 21.0 ± n/a | 18.0 ± n/a | +3.0 ± n/a | 0.100 / 0.060 |")
    assert line_starting(text, "| syn | `new` | 0 | 1/16 res | +6.0") == "| syn | `new` | 0 | 1/16 res | +6.0 ± n/a |"


def test_a_borrowed_twin_brings_only_the_measurements_the_setting_made(results_doc):
    import pandas as pd

    columns = ["data", "setting", "seed", "backbone", "bn", "stage", "miou"]
    rows = [["syn", "default", 0, "random", bn, stage, 0.1] for bn in ("as_saved", "recalibrated")
            for stage in ("-5", "-1")]
    rows.append(["syn", "new", 0, "pretrained", "as_saved", "-1", 0.2])
    shared = results_doc.with_shared_random(pd.DataFrame(rows, columns=columns))
    borrowed = shared[(shared["setting"] == "new") & (shared["backbone"] == "random")]
    assert borrowed[["bn", "stage"]].values.tolist() == [["as_saved", "-1"]]
