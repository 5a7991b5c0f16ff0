"""A merge plan: mergekit's YAML config schema, validated strictly, and resolved per tensor.

A plan file is a valid mergekit 0.1.x config  and means the same thing to both tools:

- `models: [{model, parameters}]` is one slice over all layers of every model; with a `base_model`
  that is not listed, the base is appended as one more input (as mergekit does).
- `slices: [{sources: [{model, layer_range: [start, end], parameters}], parameters}]` stacks output
  layers slice after slice; all sources of a slice have the same number of layers.
- Parameter values are scalars, gradients or filter lists, resolved exactly as mergekit 0.1.5's
  `evaluate_setting` + `resolve_parameters`:
    * gradient `[v0, ..., vK-1]` at position `t`: `s = t*(K-1); i0 = int(s); i1 = min(K-1, i0+1);
      f = s - i0; value = (1-f)*v[i0] + f*v[i1]` (non-numeric lists pick `v[int(t*(K-1))]`);
    * `t = idx / (n-1)` for the idx-th layer of a slice of n layers (`t = 1` when n == 1), counted
      per slice; tensors outside the blocks (embeddings, final norm, lm_head) always get `t = 0`,
      embeddings with the first slice's sources and parameters, the rest with the last slice's;
    * filter list `[{filter: s, value: v}, ...]`: the first entry whose filter is absent, `*`, or a
      substring of the tensor name wins, and its value may itself be a gradient (not another filter
      list); no match means "not set here";
    * precedence, highest first: the source's own `parameters` (per-model parameters only), the
      slice's `parameters`, the top-level `parameters`, the method's default. Global parameters
      never come from a model's `parameters` (mergekit ignores them there; we refuse them).
      Per-model parameters are matched against the *input* tensor name (the source layer), global
      ones against the output tensor name.

- `modules: {NAME: {models | slices, parameters}}` merges each stack of a multi-module model on its
  own; a module's parameters sit between the slice's and the top-level ones.

Unlike mergekit we refuse unknown keys, misspelled parameters, and anything we would not run the
same way (slice `residual_weight`). Every error is an `InputError` naming the file and the key path.

The modules, each importing only those below it:

- `settings`: value coercion, gradients, filter lists and the checks of one setting;
- `refs`: model references on disk (`BASE+ADAPTER`), opening checkpoints, layer counts;
- `resolve`: the plan as slices of inputs, per-tensor parameters (complete);
- `jobs`: the tensor jobs over opened checkpoints (what the executor runs);
- `checks`: inputs per method (model counts, the base, required parameters);
- `modules`: `modules:` plans as one plan view per module;
- `schema`: the `Plan` object, its YAML/dict form and `validate`;
- `groups`: one parameter's per-group ratios written as (and read back from) mergekit filter lists;
- `ratio_table`: `RatioTable`, the per-model × layer band × group table of every per-model parameter
  (its bands, the one plan it writes, read back from a plan), shared by the app's plan editor and
  `mergescope tune`.
"""

from mergescope.io.dtypes import plan_dtype as normalize_dtype
from mergescope.merge.plan.groups import GROUP_FILTERS, LLAMA_FILTERS, OTHER, group_ratios_of, plan_from_group_ratios
from mergescope.merge.plan.jobs import TensorInput, TensorJob
from mergescope.merge.plan.ratio_table import RatioTable
from mergescope.merge.plan.refs import close_all
from mergescope.merge.plan.resolve import Resolved, layer_split, with_layer
from mergescope.merge.plan.schema import (
    MODEL_KEYS,
    MODULE_KEYS,
    SLICE_KEYS,
    SOURCE_KEYS,
    TOP_KEYS,
    ModelEntry,
    ModuleDef,
    OutputSlice,
    Plan,
    SliceSource,
)
from mergescope.merge.plan.settings import (
    COND_KEYS,
    coerce_value,
    evaluate_setting,
    gradient_position,
    interpolate,
    matching_filter,
    torch_dtype,
)

__all__ = [
    "COND_KEYS",
    "GROUP_FILTERS",
    "LLAMA_FILTERS",
    "MODEL_KEYS",
    "MODULE_KEYS",
    "OTHER",
    "SLICE_KEYS",
    "SOURCE_KEYS",
    "TOP_KEYS",
    "ModelEntry",
    "ModuleDef",
    "OutputSlice",
    "Plan",
    "RatioTable",
    "Resolved",
    "SliceSource",
    "TensorInput",
    "TensorJob",
    "close_all",
    "coerce_value",
    "evaluate_setting",
    "gradient_position",
    "group_ratios_of",
    "interpolate",
    "layer_split",
    "matching_filter",
    "normalize_dtype",
    "plan_from_group_ratios",
    "torch_dtype",
    "with_layer",
]
