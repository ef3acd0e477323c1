"""Grouped Cross Attention: ``gca_attention``, its reference, the sharded wrapper, block sizes."""

from pallas_kernels.gca.api import gca_attention
from pallas_kernels.gca.block_sizes import BlockSizes
from pallas_kernels.gca.reference import gca_reference
from pallas_kernels.gca.remat import GCA_SAVED
from pallas_kernels.gca.sharding import gca_attention_sharded

__all__ = ["GCA_SAVED", "BlockSizes", "gca_attention", "gca_attention_sharded", "gca_reference"]
