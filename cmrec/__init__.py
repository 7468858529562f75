"""cmrec: Continual Memory for lifelong user modelling in CTR prediction."""

import logging

# torch warns about is_fx_tracing each time torchrec is imported; it is noise for our users.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

__version__ = "0.1.0"
