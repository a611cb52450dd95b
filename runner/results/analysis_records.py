"""The records of the routing-analysis tables (docs/metrics.md has the definitions): `coactivation`, `transitions`,
`placement` (analysis=full, or each switched on alone), `trace` (trace=true), `cache` and `locality` (replayed from
the trace: analysis.cache=true, or `python -m runner.cache`), `ablation` (analysis.ablation) and of `tasks`
(eval=lm_eval). Each row starts with the run's KeyColumns, so it joins back to `runs` like `layers` and `experts` do.
records.py registers them."""
from __future__ import annotations

import dataclasses

from .columns import (Bool, Double, Float16List, Int16List, Int32, Int32ListList, Int64, String, col)
from .key_columns import KeyColumns

PHASE = "`prefill` or `decode`"


@dataclasses.dataclass(slots=True)
class CoactivationRecord(KeyColumns):
    """One row of `coactivation`: a pair of experts of one MoE layer chosen together by at least one token."""

    phase: String = col(PHASE)
    layer: Int32 = col("the model's own layer index")
    expert_a: Int32 = col("one expert")
    expert_b: Int32 = col("another expert (both (a, b) and (b, a) are listed)")
    count: Int64 = col("C[a, b]: tokens whose selected set holds both a and b (all pairs, not only rank-adjacent "
                       "ones); P(b|a) = C[a, b] / c_a with c_a from `experts.tokens`")
    count_random: Double = col("C[a, b] under uniform random routing at the same per-token k: Σ_(a≠b) C / (E(E − 1)), "
                               "the same for every pair of the layer (v4)")
    lift: Double = col("count / count_random: above 1, the pair is chosen together more often than chance (v4)")


@dataclasses.dataclass(slots=True)
class TransitionRecord(KeyColumns):
    """One row of `transitions`: tokens routed to expert a at one MoE layer and to b at the next."""

    phase: String = col(PHASE)
    layer: Int32 = col("the MoE layer the tokens leave")
    next_layer: Int32 = col("the next MoE layer")
    expert_a: Int32 = col("an expert selected at `layer`")
    expert_b: Int32 = col("an expert selected at `next_layer`")
    count: Int64 = col("T[a, b]: tokens that selected a at `layer` and b at `next_layer` (over all pairs of their "
                       "two selected sets)")
    count_random: Double = col("T[a, b] under uniform random routing at the same per-token k: ΣT / (E_layer · "
                               "E_next_layer) (v4)")
    lift: Double = col("count / count_random (v4)")


@dataclasses.dataclass(slots=True)
class PlacementRecord(KeyColumns):
    """One row of `placement`: one expert-parallel placement of one MoE layer's measured loads over `ep_size` ranks."""

    phase: String = col(PHASE)
    layer: Int32 = col("the model's own layer index")
    ep_size: Int32 = col("ranks the experts are spread over")
    placement: String = col("`contiguous`, `round_robin`, `balanced` or `balanced+r<R>` (R replicated experts)")
    fitted_on: String = col("whose loads placed the experts: `self` (this run's: an optimistic score), or the "
                            "`run_id` given by `analysis.placement_from`")
    imbalance: Double = col("max rank load / mean rank load (>= 1; 1 is perfect)")
    balancedness: Double = col("1 / imbalance: mean / max rank load, as vLLM and SGLang report it")
    busiest_rank_tokens: Double = col("the busiest rank's (token, slot) assignments")
    expert_ranks: Int32ListList = col("the placement: for each expert, the ranks holding a replica of it")


@dataclasses.dataclass(slots=True)
class TraceRecord(KeyColumns):
    """One row of `trace`: one token at one MoE layer (trace=true), written as the batches finish."""

    phase: String = col(PHASE)
    layer: Int32 = col("the model's own layer index")
    batch: Int32 = col("the batch's index in the job")
    row: Int32 = col("the block's row in its batch")
    position: Int32 = col("the token's position in its block (decode: seq_len + step)")
    token_id: Int64 = col("the input token id at that position")
    document: Int64 = col("index of the document the token came from, in reading order (null for decode tokens)")
    k: Int32 = col("experts the token used")
    experts: Int16List = col("the selected experts, in the router's order (slots not computed are dropped)")
    expert_weights: Float16List = col("their combine weights, as the model applied them")
    router_probs: Float16List = col("with trace.logits=true: the router's full distribution (softmax or sigmoid "
                                    "scores, as the architecture scores)")


@dataclasses.dataclass(slots=True)
class CacheRecord(KeyColumns):
    """One row of `cache`: one MoE layer's trace replayed through an expert cache of one policy and capacity, in
    serving order (docs/metrics.md#expert-cache-simulation)."""

    phase: String = col(PHASE)
    layer: Int32 = col("the model's own layer index")
    policy: String = col("`lru`, `lfu` (least frequently used, ties: least recently used) or `opt` (Belady: evicts "
                         "the expert used again furthest ahead; the bound no online policy beats)")
    capacity: Int32 = col("C: experts the cache holds (1..E)")
    num_experts: Int32 = col("E: the layer's routed experts")
    capacity_fraction: Double = col("C / E")
    tokens: Int64 = col("traced tokens replayed")
    references: Int64 = col("expert references replayed: the tokens' selected experts, sum of k")
    hits: Int64 = col("references whose expert was in the cache")
    hit_rate: Double = col("hits / references (a cold start: first references miss)")
    cold_misses: Int64 = col("distinct experts referenced: misses under every policy and capacity (at C = E the "
                             "only ones)")


@dataclasses.dataclass(slots=True)
class LocalityRecord(KeyColumns):
    """One row of `locality`: adjacent-token routing overlap of one MoE layer (docs/metrics.md#decode-locality)."""

    phase: String = col(PHASE)
    layer: Int32 = col("the model's own layer index")
    pairs: Int64 = col("pairs of consecutive tokens of one sequence (decode: consecutive steps of one row)")
    overlap: Double = col("mean of |S_t ∩ S_t-1| / |S_t| over the pairs (k experts each: the share of a token's "
                          "experts the previous token also used)")
    overlap_random: Double = col("the same under uniform random routing: mean |S_t-1| / E (k / E at a fixed k)")


@dataclasses.dataclass(slots=True)
class TaskRecord(KeyColumns):
    """One row of `tasks`: one job x lm-eval task x metric (`eval=lm_eval`; lm_eval.simple_evaluate's results, v3)."""

    task: String = col("the lm-eval task (a group's subtasks each have their own rows; a group's aggregate is a row "
                       "of its own)")
    task_version: String = col("the task's version (its YAML's `metadata.version`): scores compare across versions "
                               "only when equal")
    metric: String = col("the metric: `acc`, `acc_norm`, ...")
    filter: String = col("lm-eval's filter of the metric (`none` for multiple-choice tasks)")
    value: Double = col("the metric's value over the scored examples")
    stderr: Double = col("its standard error as lm-eval reports it; null when lm-eval gives none")
    n: Int64 = col("examples scored (after `eval.limit`)")
    num_fewshot: Int32 = col("few-shot examples per prompt that ran")
    higher_is_better: Bool = col("the metric's direction")


@dataclasses.dataclass(slots=True)
class AblationRecord(KeyColumns):
    """One row of `ablation` (analysis.ablation): one MoE layer's expert removed from routing (v4)."""

    layer: Int32 = col("the model's own layer index")
    expert: Int32 = col("the expert removed from this layer's routing (its slot goes to the next best expert)")
    loss: Double = col("mean next-token NLL over the ablation batches with the expert removed")
    delta_loss: Double = col("loss minus the model's own routing's loss on the same batches")
    kl: Double = col("mean KL(P_own ‖ P_ablated) of the next-token distributions")
    top1_agreement: Double = col("share of targets where the own and the ablated routing predict the same token")
    targets: Int64 = col("next-token targets averaged over")


ANALYSIS_RECORDS: dict[str, type] = {"coactivation": CoactivationRecord, "transitions": TransitionRecord,
                                     "placement": PlacementRecord, "trace": TraceRecord, "cache": CacheRecord,
                                     "locality": LocalityRecord, "ablation": AblationRecord}
