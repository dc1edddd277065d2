"""The decode layer: one static per-row K/V cache for every token model (:mod:`.cache`, eviction as a policy of the
cache: :mod:`.eviction`) and the plans the sampler side builds of what one forward feeds (:mod:`.plan`: chain
windows, token trees, scattered positions, forced structural tokens). Models and samplers both import it; it imports
neither."""
from .cache import KVCache, move_rows_, sequence_length, write_rows_
from .eviction import LineEviction, LineSlots, add_first_query_attention_
from .plan import (DecodePlan, LayerViews, attention_mask, chain_plan, forced_bound, keep_tree_path_, layer_views,
                   prefix_plan, scattered_plan, tree_plan, tree_window_mask)
from .tree import TokenTree

__all__ = ["KVCache", "write_rows_", "move_rows_", "sequence_length", "LineEviction", "LineSlots",
           "add_first_query_attention_", "DecodePlan", "LayerViews", "attention_mask", "chain_plan", "tree_plan",
           "scattered_plan", "prefix_plan", "layer_views", "keep_tree_path_", "tree_window_mask", "forced_bound",
           "TokenTree"]
