"""The Handler record: what the profiler needs to know about one MoE architecture, as data.

A handler never runs a model. It names config fields, attribute names and quirks; the engine in
`runner/` reads them. Everything an architecture shares with the common transformers-5 layout is a
default here, so an entry only lists how it differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Union, get_args

# A config field spec: a field name ("intermediate_size"), a dotted path into a nested config
# ("ffn_config.moe_top_k"), or a tuple of such names whose values multiply
# (("moe_intermediate_size", "n_shared_experts") -> width of the shared experts).
FieldSpec = Union[str, tuple[str, ...]]

# The MoE dimensions the profiler resolves (one field of Handler each, and one key of dims.override/fallback).
DIMENSIONS = ("num_experts", "top_k", "hidden_dim", "expert_dim", "shared_expert_dim")

# Config-field spellings of the routed-expert count across architectures (GENERIC tries them all; the runner's schema
# reads them to check topk before a model loads).
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

# What the router's forward returns:
#   "triple": (logits, weights, indices), which the block hands to the experts;
#   "logits": a logits tensor only (the block computes top-k itself; indices come from the experts' inputs);
#   "none":   nothing the profiler can read routing from (no routing metrics).
RouterOutput = Literal["triple", "logits", "none"]

# How router scores become a distribution over experts: "softmax" of logits, "sigmoid" (normalised to sum to 1),
# or "probs" (the router already returns probabilities).
Scoring = Literal["softmax", "sigmoid", "probs"]

# transformers' experts implementations (`experts_implementation=<name>`).
ExpertsImplementation = Literal["eager", "batched_mm", "grouped_mm"]

# The object that holds the live top-k: the router module, the MoE block, or the config the modules read it from.
TopKOwner = Literal["router", "block", "config"]


@dataclass(frozen=True)
class TopKLocation:
    """Where the live top-k is read and written at run time: `getattr(<owner>, attr)`. Written "owner.attr"."""

    owner: TopKOwner
    attr: str

    FORMS = "'router.<attr>', 'block.<attr>' or 'config.<field>'"

    def __post_init__(self) -> None:
        if self.owner not in get_args(TopKOwner) or not self.attr.isidentifier():
            raise ValueError(f"{str(self)!r} is not {self.FORMS}")

    @classmethod
    def parse(cls, text: str) -> "TopKLocation":
        """"router.top_k" -> TopKLocation("router", "top_k"); a ValueError saying what is expected otherwise."""
        owner, dot, attr = text.partition(".")
        if not dot:
            raise ValueError(f"{text!r} is not {cls.FORMS}")
        return cls(owner, attr)  # type: ignore[arg-type] - checked in __post_init__

    def __str__(self) -> str:
        return f"{self.owner}.{self.attr}"


@dataclass(frozen=True)
class Handler:
    """Architecture knowledge for one or more transformers `model_type`s."""

    model_types: tuple[str, ...]
    # -- config fields, tried in order; the first present and not None wins ------------------------
    num_experts: tuple[FieldSpec, ...] = ("num_experts", "num_local_experts", "n_routed_experts")
    top_k: tuple[FieldSpec, ...] = ("num_experts_per_tok",)
    hidden_dim: tuple[FieldSpec, ...] = ("hidden_size",)
    expert_dim: tuple[FieldSpec, ...] = ("moe_intermediate_size",)
    shared_expert_dim: tuple[FieldSpec, ...] = ()
    # -- where things are --------------------------------------------------------------------------
    block_attrs: tuple[str, ...] = ()  # attribute name(s) the MoE block must have in its parent; () = any
    router_attrs: tuple[str, ...] = ("gate", "router")  # child of the MoE block
    experts_attr: str = "experts"  # child of the MoE block
    shared_attrs: tuple[str, ...] = ("shared_experts", "shared_expert")  # children of the block
    shared_gate_attr: str = "shared_expert_gate"  # Linear(H, 1) scaling the shared expert (Qwen2-MoE)
    layer_shared_attrs: tuple[str, ...] = ()  # shared MLPs that live in the decoder layer, outside the block
    # the block's submodules whose FLOPs belong to the MoE layer ("" = the whole block); a decoder layer that
    # is itself the block (gemma4) counts only its router and experts
    measured_parts: tuple[str, ...] = ("",)
    # where the live top-k is read at run time: "router.top_k", "block.top_k" or "config.<field>"; an entry writes
    # the string, the Handler holds it parsed (TopKLocation)
    top_k_attr: TopKLocation = TopKLocation("router", "top_k")
    # -- routing semantics -------------------------------------------------------------------------
    router_output: RouterOutput = "triple"  # see RouterOutput
    logits_index: int | None = 0  # position of the logits in the router's output tuple (None: a bare tensor)
    experts_take_routing: bool = True  # experts.forward(hidden, top_k_index, top_k_weights)
    scoring: Scoring = "softmax"  # see Scoring
    # Config field saying whether the router renormalises its top-k weights; or a constant.
    renormalize: Union[str, bool] = "norm_topk_prob"
    gated: bool = True  # gated (SwiGLU-style) experts: 3 matmuls, else 2
    shared_gated: bool = True
    # -- honesty -----------------------------------------------------------------------------------
    # False where the analytic count cannot equal what runs (e.g. every expert computed densely).
    exact: bool = True
    # False where routed experts cannot be skipped per token with the sentinel index.
    can_skip: bool = True
    # experts implementations whose sentinel handling breaks for this architecture
    sentinel_breaks: tuple[ExpertsImplementation, ...] = ()
    # False where top-k is hard-wired in code and cannot be changed at run time.
    top_k_settable: bool = True
    # Routers that limit choices to `topk_group` of `n_group` groups: k above topk_group*E/n_group
    # silently picks experts outside the allowed groups.
    group_limited: bool = False
    # The transformers release (major, minor) from which the router's zero-computation slots (indices >= the real
    # expert count) are sent to real experts with weight 0 and so cost like them; None: they never run. Versioned
    # data, because the same model code changed what it executes between releases (longcat_flash in 5.25).
    zero_slots_run_since: tuple[int, int] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        """Check the entry when it is built (at import of its family module), naming the field and what it accepts."""
        def fail(message: str) -> None:
            raise ValueError(f"Handler{self.model_types!r}: {message}")

        for name in ("model_types", "block_attrs", "router_attrs", "shared_attrs", "layer_shared_attrs",
                     "measured_parts", "sentinel_breaks", *DIMENSIONS):
            if not isinstance(getattr(self, name), tuple):
                fail(f"{name}={getattr(self, name)!r} must be a tuple (a 1-tuple is written ('name',))")
        for name, allowed in (("router_output", RouterOutput), ("scoring", Scoring)):
            if getattr(self, name) not in get_args(allowed):
                fail(f"{name}={getattr(self, name)!r} is not one of {', '.join(map(repr, get_args(allowed)))}")
        for implementation in self.sentinel_breaks:
            if implementation not in get_args(ExpertsImplementation):
                fail(f"sentinel_breaks: {implementation!r} is not one of "
                     f"{', '.join(map(repr, get_args(ExpertsImplementation)))}")
        if isinstance(self.top_k_attr, str):
            try:
                object.__setattr__(self, "top_k_attr", TopKLocation.parse(self.top_k_attr))
            except ValueError as exc:
                fail(f"top_k_attr: {exc}")
        elif not isinstance(self.top_k_attr, TopKLocation):
            fail(f"top_k_attr={self.top_k_attr!r} must be 'owner.attr' or a TopKLocation")

    def with_(self, **changes) -> "Handler":
        return replace(self, **changes)


# Used for any model whose `model_type` has no entry: pure module introspection + defaults.
GENERIC = Handler(
    model_types=("<generic>",),
    num_experts=EXPERT_COUNT_FIELDS,
    top_k=("num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts", "top_k"),
    expert_dim=("moe_intermediate_size", "intermediate_size"),
    shared_expert_dim=("shared_expert_intermediate_size",),
    note="no handler for this model_type: dimensions come from generic config names and module shapes",
)


@dataclass
class Registry:
    """`model_type` -> Handler, like transformers' auto-mappings."""

    handlers: dict[str, Handler] = field(default_factory=dict)

    def register(self, handler: Handler) -> Handler:
        for model_type in handler.model_types:
            if model_type in self.handlers:
                raise ValueError(f"model_type {model_type!r} registered twice")
            self.handlers[model_type] = handler
        return handler

    def get(self, model_type: str | None) -> Handler:
        return self.handlers.get(model_type or "", GENERIC)

    def __contains__(self, model_type: str) -> bool:
        return model_type in self.handlers
