"""The benchmark's results (the dict ``run_benchmark`` returns) as text tables."""

from __future__ import annotations

from typing import Any


def format_report(result: dict[str, Any]) -> str:
    """Header lines, then one table per section present in ``result``."""
    lines = _header(result)
    for key, inf in result.get("inference", {}).items():
        lines += ["", *_inference(key, inf)]
    if "training" in result:
        lines += ["", *_training(result["training"])]
    if "variants" in result:
        lines += ["", *_variants(result["variants"])]
    if "agreement" in result:
        lines += ["", *_agreement(result["agreement"])]
    if "backends" in result:  # backends
        from .backends import format_backends

        lines += ["", *format_backends(result["backends"])]
    if "dcn" in result:
        lines += ["", *_dcn(result["dcn"])]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:5.2f}x"


def _memory(mem: dict[str, Any] | None) -> list[str]:
    if not mem:
        return []
    return [f"  peak memory ({mem['kind']}) {mem['peak_mib']:.0f} MiB (+{mem['increase_mib']:.0f} MiB)"]


def _stage_table(stages: dict[str, dict[str, Any]], per_image: bool) -> list[str]:
    """A header and one row per stage: ms, (ms/image,) min ms, GFLOP, vs floor, best."""
    lines = [f"  {'stage':<16}{'ms':>10}" + (f"{'ms/image':>10}" if per_image else "")
             + f"{'min ms':>10}{'GFLOP':>9}{'vs floor':>10}{'best':>8}"]
    for name, s in stages.items():
        lines.append(f"  {name:<16}{s['ms']:>10.1f}" + (f"{s['ms_per_image']:>10.1f}" if per_image else "")
                     + f"{s['min_ms']:>10.1f}{s['gflops']:>9.2f}"
                     f"{_ratio(s['ratio_to_floor']):>10}{_ratio(s['best_round_ratio']):>8}")
    return lines


def _header(result: dict[str, Any]) -> list[str]:
    o, m, f = result["options"], result["machine"], result["floor"]
    throughput = f["throughput_gflops_per_s"]
    return [
        f"solov2 benchmark: {result['config']} {o['height']}x{o['width']} {o['precision']} on {m['device']} "
        f"({m['cpu']}, {m['torch_threads']} threads, torch {m['torch']})",
        f"load average at start {m['load_average_at_start']}, at end {m['load_average_at_end']}",
        f"floor: {f['convolution']} reaches {throughput['median']:.1f} GFLOP/s "
        f"(median; min {throughput['min']:.1f}, max {throughput['max']:.1f}); "
        "ratios use the throughput measured right before each item; 'best' is the lowest per-round ratio",
        f"median of {o['repeats']} rounds after {o['warmup']} warm-up; fold_bn={o['fold_bn']} "
        f"channels_last={o['channels_last']}",
    ]


def _inference(key: str, inf: dict[str, Any]) -> list[str]:
    load = inf["postprocess_load"]
    lines = [f"inference {key.replace('_', ' ')} (original {inf['original_size'][0]}x{inf['original_size'][1]}, "
             f"{load['candidates_above_score_thr']} candidates/image, {load['masks']} masks, "
             f"{load['instances_returned']} returned)",
             *_stage_table(inf["stages"], per_image=True)]
    lines += [
        f"  latency (preprocess + network + postprocess) {inf['latency_ms']:.1f} ms "
        f"({inf['latency_ms_per_image']:.1f} ms/image); network floor {inf['network_floor_ms']:.1f} ms; "
        f"network {_ratio(inf['network_ratio_to_floor']).strip()} floor "
        f"(best round {_ratio(inf['network_best_round_ratio']).strip()})",
        f"  post-processing share of latency {100 * inf['postprocess_share']:.1f}%",
    ]
    return lines + _memory(inf["peak_memory"])


def _training(t: dict[str, Any]) -> list[str]:
    lines = [f"training step ({t['images']} images x {t['instances_per_image']} instances, "
             f"{t['positive_pairs']} positive pairs)",
             *_stage_table(t["stages"], per_image=False)]
    lines += [
        f"  step (targets + forward + loss + backward + optimizer) {t['step_ms']:.1f} ms; "
        f"data {t['data_ms_outside_step']:.1f} ms (in loader workers during training)",
        f"  compute (forward + loss + backward + optimizer) {t['compute_ms']:.1f} ms, floor "
        f"{t['compute_floor_ms']:.1f} ms: {_ratio(t['compute_ratio_to_floor']).strip()} "
        f"(best round {_ratio(t['compute_best_round_ratio']).strip()})",
        f"  targets share of the step {100 * t['targets_share']:.1f}%",
    ]
    return lines + _memory(t["peak_memory"])


def _variants(v: dict[str, Any]) -> list[str]:
    lines = ["network variants, batch 1 (interleaved in the same rounds)",
             f"  {'variant':<32}{'ms':>10}{'min ms':>10}{'speedup':>9}{'vs floor':>10}{'best':>8}"]
    for name, s in v["variants"].items():
        lines.append(f"  {name:<32}{s['ms']:>10.1f}{s['min_ms']:>10.1f}{s['median_round_speedup']:>8.2f}x"
                     f"{_ratio(s['ratio_to_floor']):>10}{_ratio(s['best_round_ratio']):>8}")
    if "compile_seconds" in v:
        lines.append(f"  torch.compile took {v['compile_seconds']:.0f} s")
    return lines


def _agreement(a: dict[str, Any]) -> list[str]:
    lines = [f"{a['precision']} vs fp32 on {a['images']} images ({a['weights']}): instances {a['instances']}"]
    if a["matched_mask_iou"]:
        lines.append(f"  matched {100 * a['matched_fraction_of_fp32']:.1f}% of fp32's; mask IoU mean "
                     f"{a['matched_mask_iou']['mean']:.4f} min {a['matched_mask_iou']['min']:.4f}; "
                     f"|score diff| mean {a['matched_score_abs_diff']['mean']:.4f} "
                     f"max {a['matched_score_abs_diff']['max']:.4f}")
    if a["confident_mask_iou"]:
        lines.append(f"  fp32 instances scored >= {a['confident_threshold']}: {a['confident_fp32_instances']}, "
                     f"{100 * a['confident_matched_fraction']:.1f}% matched; mask IoU (0 if unmatched) mean "
                     f"{a['confident_mask_iou']['mean']:.4f} min {a['confident_mask_iou']['min']:.4f}")
    return lines


def _dcn(d: dict[str, Any]) -> list[str]:
    """The dcn section: one row per layer with ms, min ms and the ratio to conv2d."""
    n, c, h, w = d["shape"]
    lines = [f"deformable convolution, forward: {c} -> {c} channels, {d['kernel']}x{d['kernel']}, "
             f"{n}x{c}x{h}x{w} (NCHW), {d['precision']}, deform_conv2d backend {d['backend']} "
             f"(interleaved in the same rounds)",
             f"  {'layer':<16}{'ms':>10}{'min ms':>10}{'vs conv2d':>11}"]
    for name, s in d["layers"].items():
        lines.append(f"  {name:<16}{s['ms']:>10.1f}{s['min_ms']:>10.1f}{s['ratio_to_conv2d']:>10.2f}x")
    return lines
