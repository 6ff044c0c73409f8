"""The command lines, installed as console scripts by pip (ssmlm installed from its checkout or a wheel built there)
and runnable as `python -m ssmlm.cli.NAME`:

    ssmlm-train         train.py          train (or resume) a model from a YAML config or a shipped config's name
    ssmlm-generate      generate.py       stream a continuation of a prompt from a saved model
    ssmlm-generate-audio  generate_audio.py  sample audio clips from a raw-audio model (ssmlm/evaluation/)
    ssmlm-eval-length   eval_length.py    perplexity at 1x..16x the training length (ssmlm/evaluation/)
    ssmlm-bench         bench.py          speed, memory and FLOPs against transformers' Llama (ssmlm/benchmark/)
    ssmlm-build-corpus  build_corpus.py   build or verify the books/code/math corpus (ssmlm/data/corpus/)
    ssmlm-build-speech-corpus  build_speech_corpus.py  build or verify the spoken-digits corpus (ssmlm/data/speech/)
    ssmlm-study         study.py          train, evaluate and time every model of a study plan (ssmlm/study/)
    ssmlm-audio-study   audio_study.py    SaShiMi against flat S4, GSS and Transformer stacks on audio (ssmlm/study/)
    ssmlm-recall        recall.py         the synthetic recall suite over every kernel and block (ssmlm/study/)

`train.py` and `generate.py` at the top of a checkout are two-line wrappers of ssmlm-train and ssmlm-generate.
The list above is checked against pyproject.toml's console scripts (tests/test_code_shape.py).

Every command goes through entry.py: its exit codes mean the same everywhere (0 done; 1 the command's own check
failed, e.g. training diverged; 2 a problem with the input, found before anything was written; 74 writing failed,
e.g. a full disk; 130 stopped by Ctrl-C or SIGTERM), every failure the user can act on is one line on stderr, and
--help answers before torch is imported.
"""
