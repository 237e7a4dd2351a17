"""bench/study_v3.py (issue #21): domains, the jittered prompt box and its blind baseline, the strength choice with
"no training" as an option, the hierarchical statistics, and the whole study at toy scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import load_bench
from spr_plugin.core.errors import SPRError


def _rows(hits: list[int]) -> list[dict[str, float]]:
    return [{"rec_hit@0.9": float(h), "rec_iou": 0.5 + 0.3 * h, "rec_parsed": 1.0, "rec_area_ratio": 1.0} for h in hits]


def _hits(n: int, rate: float, seed: int) -> list[int]:
    return list((np.random.default_rng(seed).random(n) < rate).astype(int))


def test_welch_interval_matches_scipy_and_widens_with_the_references_own_spread():
    from scipy.stats import ttest_ind

    st = load_bench("study_v3_stats")
    a, b = [0.31, 0.35, 0.33, 0.36], [0.30, 0.25, 0.28]
    lo, hi = st.welch_interval(a, b)
    ref = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    # the same arm against one reference value: narrower (v2 ignored the reference's spread)
    lo1, hi1 = st.welch_interval(a, [float(np.mean(b))])
    assert hi1 - lo1 < hi - lo
    assert st.welch_interval([0.3], [0.2]) is None


def test_hierarchical_bootstrap_puts_base_variance_inside_the_interval():
    st = load_bench("study_v3_stats")
    n = 300
    ref = {b: {0: _rows(_hits(n, 0.3, b))} for b in range(3)}
    # a consistent gain of about 0.2 on every base and seed: an effect
    gain = {b: {s: _rows(_hits(n, 0.5, 100 + 10 * b + s)) for s in range(3)} for b in range(3)}
    [c] = st.hierarchical_compare("spr_dpo", gain, "sft", ref, ["rec_acc@0.9"], n_boot=400)
    assert c.delta == pytest.approx(0.2, abs=0.06) and c.ci95[0] > 0 and c.ci95_seeds[0] > 0 and c.effect
    assert c.n_seeds == 9 and c.seeds_same_sign == 9
    # a big gain on one base and losses on the two others: every base's own images interval would exclude 0,
    # but across bases the result does not hold
    mixed = {
        0: {s: _rows(_hits(n, 0.8, 200 + s)) for s in range(3)},
        1: {s: _rows(_hits(n, 0.2, 210 + s)) for s in range(3)},
        2: {s: _rows(_hits(n, 0.2, 220 + s)) for s in range(3)},
    }
    [m] = st.hierarchical_compare("spr_dpo", mixed, "sft", ref, ["rec_acc@0.9"], n_boot=400)
    assert m.ci95[0] < 0 < m.ci95[1] and not m.effect
    one_base = st.hierarchical_compare("spr_dpo", {0: mixed[0]}, "sft", {0: ref[0]}, ["rec_acc@0.9"], n_boot=400)[0]
    assert one_base.ci95[0] > 0  # what a one-base study (v2) would have reported
    with pytest.raises(ValueError, match="share no base"):
        st.hierarchical_compare("a", {5: gain[0]}, "b", ref, ["rec_acc@0.9"])
    with pytest.raises(ValueError, match="aligned"):
        st.hierarchical_compare("a", {0: {0: _rows([1] * 10)}}, "b", ref, ["rec_acc@0.9"])


def test_domains_differ_as_designed_and_names_are_unique(tmp_path):
    v3 = load_bench("study_v3")
    a, b = v3.DOMAIN_A, v3.DOMAIN_B
    assert set(b.colours) - set(a.colours) and set(b.shapes) - set(a.shapes)  # B shows names A never does
    assert b.rec_radius[1] < a.rec_radius[1] and b.clutter > 0 == a.clutter
    js = v3.render_domain(tmp_path / "B", b, 6, 3, 2, b.region_radius)
    data = json.loads(js.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    for im in data["images"]:
        anns = [x for x in data["annotations"] if x["image_id"] == im["id"]]
        assert len(anns) == 2 and len({x["category_id"] for x in anns}) == 2
        for x in anns:
            colour, shape = names[x["category_id"]].split()
            assert colour in b.colours and shape in b.shapes
            bx, by, bw, bh = x["bbox"]
            assert 0 <= bx and 0 <= by and bx + bw <= v3.SIDE and by + bh <= v3.SIDE
    again = v3.render_domain(tmp_path / "B2", b, 6, 3, 2, b.region_radius)
    assert json.loads(again.read_text())["annotations"] == data["annotations"]


def test_jittered_prompt_box_holds_the_objects_and_defeats_the_blind_split(tmp_path):
    v3 = load_bench("study_v3")
    st = load_bench("study_stats")
    vst = load_bench("study_v3_stats")
    cfg = v3.V3Config(out=tmp_path)
    js = v3.render_domain(tmp_path / "A", v3.DOMAIN_A, 30, 1, 2, v3.DOMAIN_A.region_radius)
    regions = v3.regions_of(js, cfg)
    assert len(regions) == 30
    again = v3.regions_of(js, cfg)
    assert [r.box for r in regions] == [r.box for r in again]  # deterministic per region
    f1_union, f1_jit = [], []
    for r in regions:
        union = v3.Box(
            min(o.box.x1 for o in r.objects),
            min(o.box.y1 for o in r.objects),
            max(o.box.x2 for o in r.objects),
            max(o.box.y2 for o in r.objects),
        )
        assert r.box.x1 <= union.x1 and r.box.y1 <= union.y1 and r.box.x2 >= union.x2 and r.box.y2 >= union.y2
        assert r.box != union
        names = [o.category for o in sorted(r.objects, key=lambda o: o.box.x1)]
        for box, acc in ((union, f1_union), (r.box, f1_jit)):
            acc.append(st.region_row(vst.blind_region_answer(box, names, v3.FMT, v3.SIDE, v3.SIDE), r, v3.FMT))
    assert st.metrics(f1_jit)["region_f1@0.5"] < st.metrics(f1_union)["region_f1@0.5"] - 0.2


def test_strength_choice_prefers_no_training_on_a_tie_and_records_the_decision(tmp_path):
    v3 = load_bench("study_v3")
    cfg = v3.V3Config(out=tmp_path, strengths=("none", "lr1e-4_ep3"), base_seeds=(0,), n_bases=1)
    cfg.save()
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "base_normal_s0.json").write_text(json.dumps({"gate": True, "val_A": {}}))
    rec = [{"rec_hit@0.9": 1.0, "rec_iou": 0.8, "rec_parsed": 1.0, "rec_area_ratio": 1.0}]
    reg = [{"n_gt": 2.0, "n_pred": 2.0, "matched@0.5": 1.0, "matched@0.75": 0.0, "matched@0.9": 0.0, "matched_iou_sum": 0.6}]
    for s in cfg.strengths:
        v3.save_rows(tmp_path / "rows" / "B_val" / f"sel_gt_sft_{s}" / "b0_s0.json", rec, reg)
    assert v3.chosen_strength(cfg, "gt_sft") == "none"
    better = [dict(reg[0], **{"matched@0.5": 2.0})]
    v3.save_rows(tmp_path / "rows" / "B_val" / "sel_spr_dpo_lr1e-4_ep3" / "b0_s0.json", rec, better)
    v3.save_rows(tmp_path / "rows" / "B_val" / "sel_spr_dpo_none" / "b0_s0.json", rec, reg)
    assert v3.chosen_strength(cfg, "spr_dpo") == "lr1e-4_ep3"
    log = v3.decisions(cfg)
    assert [d["choice"] for d in log] == ["none", "lr1e-4_ep3"] and "spr_dpo" in log[1]["what"]
    with pytest.raises(SPRError, match="chosen_sft"):
        v3.chosen_strength(cfg, "chosen_sft")
    with pytest.raises(SPRError, match="n_bases"):
        v3.V3Config(out=tmp_path, strengths=("none", "lr1e-4_ep3"), base_seeds=(0,), n_bases=2).save()


def test_publishing_refuses_to_overwrite_another_studys_results(tmp_path):
    v3 = load_bench("study_v3")
    (tmp_path / "results.json").write_text(json.dumps({"arms": {}, "comparisons": []}))  # v2's, no "study" key
    with pytest.raises(SPRError, match="another study"):
        v3.check_publish_dest(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"study": "v3"}))
    v3.check_publish_dest(tmp_path)
    v3.check_publish_dest(tmp_path / "empty")
    # and v2's publisher does not overwrite v3's results (v2's published files are history_v2_* now)
    with pytest.raises(SPRError, match="another study"):
        load_bench("effect_study").publish(None, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == {"study": "v3"}


@pytest.mark.slow
def test_toy_study_runs_every_stage_and_publishes_results_in_the_schema(tmp_path):
    """The whole v3 path at toy scale: bases + gate, pairs with jittered prompts, gt datasets, the (forced) strength,
    every arm including two online rounds, the control, analysis and publishing. About 3 min on 2 shared cores
    (7 llamafactory-cli trainings), hence slow."""
    v3 = load_bench("study_v3")
    cfg = v3.V3Config(out=tmp_path / "toy", **v3.TOY)
    v3.run_study(cfg, workers=2)
    v3.publish(cfg, tmp_path / "pub")
    res = json.loads((tmp_path / "pub" / "results.json").read_text())
    assert {"sft", "spr_dpo", "gt_sft", "gt_dpo", "chosen_sft", "spr_online", "control_sft", "control_spr_dpo"} <= set(
        res["arms"]
    )
    assert all({"metrics", "n_seeds"} <= set(a) for a in res["arms"].values())
    keys = {"arm", "vs", "metric", "delta", "ci95", "ci95_seeds", "seeds_same_sign", "effect"}
    assert res["comparisons"] and all(keys <= set(c) for c in res["comparisons"])
    assert {c["arm"] for c in res["comparisons"]} >= {"spr_dpo", "gt_dpo", "spr_dpo@A"}
    assert any("strength of spr_dpo" in d["what"] for d in res["decisions"])
    assert any("normal base seed 0: gate" in d["what"] for d in res["decisions"])
    assert any("control base seed 0: gate" in d["what"] for d in res["decisions"])
    gt_dpo = json.loads((tmp_path / "toy" / "pairs" / "b0" / "data" / "gt_dpo.json").read_text())
    spr = json.loads((tmp_path / "toy" / "pairs" / "b0" / "data" / "spr_jit.json").read_text())
    assert {r["rejected"]["value"] for r in gt_dpo} == {r["rejected"]["value"] for r in spr}  # the same worst own sample
    runs = tmp_path / "toy" / "runs"
    for arm in ("gt_sft", "gt_dpo", "chosen_sft", "spr_dpo", "control_spr_dpo"):
        assert (runs / f"{arm}_b0_s0_lr1e-3_ep1" / "adapter_model.safetensors").is_file()
    assert (runs / "spr_online_b0_s0_lr1e-3_ep1_r2" / "adapter_model.safetensors").is_file()  # trained from round 1's merge
    online = tmp_path / "toy" / "pairs" / "online_b0_s0_lr1e-3_ep1_r2"
    assert (online / "from" / "model.safetensors").is_file() and (online / "data" / "spr_jit.json").is_file()
    md = (tmp_path / "pub" / "results.md").read_text()
    assert "blind baseline" in md and "Decisions" in md and "Limits" in md
