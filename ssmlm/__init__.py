"""ssmlm: state-space language models (GSS, Mega, hybrids) as Hugging Face classes.

Importing the package registers the model with AutoConfig, AutoModel, AutoModelForCausalLM and
AutoModelForSequenceClassification, so `AutoModelForCausalLM.from_pretrained(dir)` and
`pipeline("text-generation", model=dir)` work without `trust_remote_code`.
"""

from .compat import check_installed_release

check_installed_release()

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from .cache import SSMLMCache  # noqa: E402
from .configuration import SSMLMConfig  # noqa: E402
from .modeling import (  # noqa: E402
    LORA_TARGET_MODULES,
    SSMLMForCausalLM,
    SSMLMForSequenceClassification,
    SSMLMModel,
    SSMLMPreTrainedModel,
)

AutoConfig.register(SSMLMConfig.model_type, SSMLMConfig, exist_ok=True)
AutoModel.register(SSMLMConfig, SSMLMModel, exist_ok=True)
AutoModelForCausalLM.register(SSMLMConfig, SSMLMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SSMLMConfig, SSMLMForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["LORA_TARGET_MODULES", "SSMLMCache", "SSMLMConfig", "SSMLMForCausalLM", "SSMLMForSequenceClassification",
           "SSMLMModel", "SSMLMPreTrainedModel"]
