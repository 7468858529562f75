"""The event-log schema shared by readers, the generator and every pipeline.

An event log is a table with one click per row:

==============  ==========================================  ========
column          type                                        required
==============  ==========================================  ========
``user_id``     integer or string                           yes
``item_id``     integer or string                           yes
``timestamp``   integer/float (epoch) or date-time string   yes
``category_id`` integer or string                           no
==============  ==========================================  ========
"""

from __future__ import annotations

USER = "user_id"
ITEM = "item_id"
TIMESTAMP = "timestamp"
CATEGORY = "category_id"
# Feature keys of the KeyedJaggedTensor histories that batches carry and the embedding tables read.
ITEM_KEY = "item"
CATEGORY_KEY = "category"

REQUIRED_COLUMNS: tuple[str, ...] = (USER, ITEM, TIMESTAMP)
ID_COLUMNS: tuple[str, ...] = (USER, ITEM, CATEGORY)

# Index 0 of every vocabulary is padding; index 1 is the bucket for ids never seen when it was built.
PAD_INDEX = 0
OOV_INDEX = 1
