"""Session-wide fixtures: a small tokenizer trained on the real text in tests/fixtures/text, and a tiny trained model.

Nothing may reach the network: the Hugging Face libraries are switched offline and given an empty home before
any of them is imported, so a test that would download something fails instead.

Torch runs one intra-op thread unless OMP_NUM_THREADS says otherwise: the test models are too small to gain from
more, and OpenMP's spinning threads slow training here tenfold or worse when other processes share the cores.
"""

import os
import shutil
import tempfile
from pathlib import Path

HF_HOME = tempfile.mkdtemp(prefix="ssmlm-tests-hf-home-")
os.environ.update(HF_HOME=HF_HOME, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when torch is first imported, and by subprocesses

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

import transformers_common  # noqa: E402
from fixtures.tiny_corpus import write_tiny_corpus  # noqa: E402

from ssmlm import SSMLMConfig, SSMLMForCausalLM  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

TEXT_DIR = Path(__file__).parent / "fixtures" / "text"

# Every property test: no per-example deadline (a long FFT may take a while on a loaded machine), and fixtures of
# function scope are fine (they are not reset between examples, and no test relies on that). Each test sets only
# its number of examples.
settings.register_profile("ssmlm", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("ssmlm")


def pytest_configure(config):
    transformers_common.PYTEST_CONFIG = config  # transformers' common tests declare their marks with it


def pytest_unconfigure(config):
    shutil.rmtree(HF_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def fixture_texts() -> list[str]:
    """The real text excerpts the tokenizer and the tiny model learn from, one string per file."""
    files = sorted(TEXT_DIR.glob("*.txt"))  # not LICENSES.md: that is about the texts, not one of them
    assert files, f"no text fixtures in {TEXT_DIR}"
    return [path.read_text(encoding="utf-8") for path in files]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The tiny corpus (fixtures/tiny_corpus.py) that training tests run on."""
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The data cache of the training tests, so the tokenizer is trained and the tiny corpus packed once."""
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, fixture_texts) -> Path:
    """A byte-level BPE tokenizer (vocabulary 512) saved with save_pretrained, loadable by AutoTokenizer."""
    # Imported here, not above: ssmlm.data needs `datasets`, which the GPU machine of the device check lacks, and
    # its tests must collect there.
    from ssmlm.data.tokenizer import SPECIAL_TOKENS
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no text is ever <unk>
        show_progress=False,
    )
    tokenizer.train_from_iterator(fixture_texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_input_names=["input_ids", "attention_mask"],  # the model takes no token_type_ids
        **SPECIAL_TOKENS,
    )
    path = tmp_path_factory.mktemp("tokenizer")
    wrapped.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir, fixture_texts) -> Path:
    """A 2-layer, 32-wide SSMLMForCausalLM trained briefly on the fixture text, saved with its tokenizer."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = SSMLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    ids = torch.tensor([i for text in fixture_texts for i in tokenizer(text).input_ids + [tokenizer.eos_token_id]])
    window, batch_size = 64, 16
    with torch.random.fork_rng():  # seeded for a reproducible model, without resetting the other tests' RNG
        torch.manual_seed(0)
        model = SSMLMForCausalLM(config)
        # 80 steps on random 64-token windows (about a second): enough for generations to look like text.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(80):
            starts = torch.randint(0, len(ids) - window, (batch_size,))
            batch = torch.stack([ids[start:start + window] for start in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()

    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
