"""ssmlm: state-space language models (GSS, Mega, hybrids) as Hugging Face classes.

Importing the package registers the model with AutoConfig, AutoModel, AutoModelForCausalLM and
AutoModelForSequenceClassification, so `AutoModelForCausalLM.from_pretrained(dir)` and
`pipeline("text-generation", model=dir)` work without `trust_remote_code`.

The import itself loads neither torch nor transformers, so that the command lines (ssmlm.cli) answer --help at
once: the classes are imported when first used, and the registration happens as soon as an import loads
transformers (at once, when transformers is loaded already).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.3.0"
__all__ = ["LORA_TARGET_MODULES", "SSMLMCache", "SSMLMConfig", "SSMLMForCausalLM", "SSMLMForSequenceClassification",
           "SSMLMModel", "SSMLMPreTrainedModel"]

# The package's names and the modules that define them, imported on first use.
PUBLIC_NAMES = {"SSMLMCache": "cache", "SSMLMConfig": "configuration", "LORA_TARGET_MODULES": "modeling",
                "SSMLMForCausalLM": "modeling", "SSMLMForSequenceClassification": "modeling",
                "SSMLMModel": "modeling", "SSMLMPreTrainedModel": "modeling"}

registration_started = False


def register() -> None:
    """Register the ssmlm classes with transformers' Auto classes (once; refuses a transformers that is too old)."""
    global registration_started
    if registration_started:
        return
    registration_started = True
    from .model.compat import check_installed_release

    check_installed_release()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from .model.configuration import SSMLMConfig
    from .model.modeling import SSMLMForCausalLM, SSMLMForSequenceClassification, SSMLMModel

    AutoConfig.register(SSMLMConfig.model_type, SSMLMConfig, exist_ok=True)
    AutoModel.register(SSMLMConfig, SSMLMModel, exist_ok=True)
    AutoModelForCausalLM.register(SSMLMConfig, SSMLMForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(SSMLMConfig, SSMLMForSequenceClassification, exist_ok=True)


def __getattr__(name: str):
    if name not in PUBLIC_NAMES:
        raise AttributeError(f"module 'ssmlm' has no attribute {name!r}")
    register()
    return getattr(importlib.import_module(f".model.{PUBLIC_NAMES[name]}", __name__), name)


class RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Calls register() once an import of transformers, or of an ssmlm module, has finished with transformers
    loaded: not inside it, where register() could meet a module of ssmlm's that is only half imported. Only the
    outermost such import is watched: the ones it makes end before it."""

    def __init__(self):
        self.watching = False

    def find_spec(self, name, path=None, target=None):
        if self.watching or not (name == "transformers" or name.startswith("ssmlm.")):
            return None
        self.watching = True  # while this finder looks the module up too
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.watching = False
        if spec is None or spec.loader is None:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module):
            self.watching = True
            try:
                run_module(module)
            finally:
                self.watching = False
            if "transformers" in sys.modules:
                sys.meta_path.remove(self)
                register()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    register()
else:
    sys.meta_path.insert(0, RegisterAfterImport())
